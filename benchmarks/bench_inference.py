"""Inference throughput: plain eager vs ``tiniest.optimize`` vs ONNX Runtime, one run, same machine.

    .venv/bin/python benchmarks/bench_inference.py --weights ../shared/weights/tiniest.pt --threads 2

Engines are timed in interleaved rounds (so a busy neighbour slows them all alike) and each
reports its best round, as ``timeit`` does; ratios are against plain eager in the same run.
Parity (max |logit difference| and top-1 agreement against eager) is checked on the same
inputs. One-time costs are timed once: ``optimize`` on a machine that has never built the model
(an empty ``$TINIEST_COMPILED_CACHE``: export + AOTInductor build + first call), ``optimize`` again as any
later process runs it (load the cached package + first call), and ONNX export + session.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tiniest  # noqa: E402
from tiniest.export import write_onnx  # noqa: E402
from tiniest.fast import optimize  # noqa: E402

Engine = Callable[[torch.Tensor], torch.Tensor]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onnx_engine(model: torch.nn.Module, folder: Path, threads: int) -> Engine:
    import onnxruntime as ort

    path = folder / "tiniest.onnx"
    write_onnx(model, path, {})  # type: ignore[arg-type]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads otherwise spin for a while after each run, starving PyTorch's threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


def timed(label: str, build: Callable[[], Engine], warmup: torch.Tensor) -> tuple[Engine, float]:
    start = time.perf_counter()
    engine = build()
    with torch.inference_mode():
        engine(warmup)
    cost = time.perf_counter() - start
    print(f"one-time cost, {label}: {cost:.1f} s", flush=True)
    return engine, cost


def throughput(engines: dict[str, Engine], x: torch.Tensor, rounds: int, min_time: float) -> dict[str, float]:
    """Best images/s per engine over ``rounds`` interleaved rounds of at least ``min_time`` seconds each."""
    best = dict.fromkeys(engines, 0.0)
    with torch.inference_mode():
        for engine in engines.values():
            engine(x)
        for _ in range(rounds):
            for name, engine in engines.items():
                calls, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < min_time or calls < 2:
                    engine(x)
                    calls += 1
                best[name] = max(best[name], calls * x.shape[0] / elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights" / "tiniest.pt"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per engine per round")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = tiniest.tiniest(weights=args.weights)
    warmup = torch.rand(max(args.batches), 3, 32, 32) - 0.5
    print(f"{cpu_name()}, {os.cpu_count()} logical CPUs, {args.threads} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        engines: dict[str, Engine] = {"eager": model}
        build_optimized = lambda: optimize(model)  # noqa: E731
        os.environ["TINIEST_COMPILED_CACHE"] = str(Path(folder) / "compiled")  # a machine that never built it
        timed("optimize, first on this machine (export + AOTInductor build + first call)", build_optimized, warmup)
        engines["optimize"], _ = timed("optimize, later processes (cached package, 1st call)", build_optimized, warmup)
        build_onnx = lambda: onnx_engine(model, Path(folder), args.threads)  # noqa: E731
        engines["onnxruntime"], _ = timed("onnx export + session", build_onnx, warmup)
        print(f"optimize compiled: {engines['optimize'].compiled}")  # type: ignore[attr-defined]

        rows = []
        for batch in args.batches:
            x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) - 0.5
            with torch.inference_mode():
                want = model(x)
                for name in ("optimize", "onnxruntime"):
                    got = engines[name](x)
                    diff = (got - want).abs().max().item()
                    agree = bool(torch.equal(got.argmax(1), want.argmax(1)))
                    print(f"parity batch {batch} {name}: max |logit diff| {diff:.2e}, same top-1: {agree}")
                    if diff > 1e-4 or not agree:
                        print("PARITY FAILURE", file=sys.stderr)
                        return 1
            speeds = throughput(engines, x, args.rounds, args.min_time)
            rows += [(batch, name, speed, speed / speeds["eager"]) for name, speed in speeds.items()]

    print("\n| batch | engine | images/s | vs eager |\n|---:|---|---:|---:|")
    for batch, name, speed, ratio in rows:
        print(f"| {batch} | {name} | {speed:,.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
