"""Inference throughput: plain eager vs ``tiniest.optimize`` vs ONNX Runtime, one run, quiet and beside neighbours.

    .venv/bin/python benchmarks/bench_inference.py --weights ../shared/weights/tiniest.pt --threads 2

Engines are timed in interleaved rounds (so a busy neighbour slows them all alike) and each
reports its median round; ratios are against plain eager in the same run and condition, and the
CPU each spends per picture is reported beside it. Each condition is started and stopped by the
benchmark itself: ``quiet`` (no neighbour of ours; the machine's other load is printed), ``loop``
(one core kept busy by a Python loop), ``matmul`` (two processes each running a 2-thread torch
matmul loop: more runnable threads than cores). ``optimize (intra-op)`` is the package run as it
was before the thread plan (all chunks in the caller's thread on ``--threads`` OpenMP threads),
and ``+ thread per call`` runs each call in a new thread, as a thread-per-request server does.
The decode rate (``tiniest.transforms.decode_image`` against a plain Pillow loop, CPU per picture)
is reported for each condition where ``--pictures`` names a folder of images.
Parity (max |logit difference| and top-1 agreement against eager) is checked on the same
inputs. One-time costs are timed once: ``optimize`` on a machine that has never built the model
(an empty ``$TINIEST_COMPILED_CACHE``: export + AOTInductor build + first call), ``optimize`` again as any
later process runs it (load the cached package + first call), and ONNX export + session.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neighbours import NEIGHBOURS, neighbours  # noqa: E402

import tiniest  # noqa: E402
from tiniest.export import write_onnx  # noqa: E402
from tiniest.fast import optimize  # noqa: E402
from tiniest.fast.optimized import CHUNK, OptimizedTiniest  # noqa: E402

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


def intra_op(optimized: OptimizedTiniest) -> Engine:
    """The package as optimize ran it before the thread plan: all chunks in the caller's thread, torch's threads."""
    runner = optimized._fast_path().runner  # type: ignore[union-attr]
    assert runner is not None

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.channels_last)
        return torch.cat([runner(chunk) for chunk in x.split(CHUNK)])

    return run


def per_call_thread(engine: Engine) -> Engine:
    """``engine`` called from a new thread each time (a thread-per-request server)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []
        worker = threading.Thread(target=lambda: out.append(engine(x)))
        worker.start()
        worker.join()
        return out[0]

    return run


def throughput(
    engines: dict[str, Engine], x: torch.Tensor, rounds: int, min_time: float
) -> dict[str, tuple[float, float]]:
    """Median images/s and CPU ms per image per engine over ``rounds`` interleaved rounds of ``min_time`` s each."""
    speeds: dict[str, list[float]] = {name: [] for name in engines}
    cpus: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        for engine in engines.values():
            engine(x)
        for _ in range(rounds):
            for name, engine in engines.items():
                calls, start, cpu = 0, time.perf_counter(), time.process_time()
                while (elapsed := time.perf_counter() - start) < min_time or calls < 2:
                    engine(x)
                    calls += 1
                speeds[name].append(calls * x.shape[0] / elapsed)
                cpus[name].append((time.process_time() - cpu) * 1e3 / (calls * x.shape[0]))
    return {name: (statistics.median(speeds[name]), statistics.median(cpus[name])) for name in engines}


def decode_cost(files: list[Path]) -> tuple[float, float, float]:
    """Pictures/s of ``decode_image``, and CPU ms per picture of it and of a plain Pillow loop (median of 3)."""
    from PIL import Image

    from tiniest.transforms import decode_image

    ours, plain, rate = [], [], []
    for _ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        for file in files:
            decode_image(file)
        ours.append((time.process_time() - cpu) * 1e3 / len(files))
        rate.append(len(files) / (time.perf_counter() - wall))
        cpu = time.process_time()
        for file in files:
            with Image.open(file) as image:
                image.convert("RGB")
        plain.append((time.process_time() - cpu) * 1e3 / len(files))
    return statistics.median(rate), statistics.median(ours), statistics.median(plain)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:4]) if Path("/proc/loadavg").exists() else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights" / "tiniest.pt"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per engine per round")
    parser.add_argument("--conditions", nargs="+", default=list(NEIGHBOURS), choices=list(NEIGHBOURS))
    parser.add_argument("--pictures", default=str(ROOT.parent / "shared" / "cifar10" / "test"))
    parser.add_argument("--decode", type=int, default=500, help="pictures decoded per round (0: no decode rate)")
    parser.add_argument("--build", action="store_true", help="also time a first build in an empty cache")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = tiniest.tiniest(weights=args.weights)
    warmup = torch.rand(max(args.batches), 3, 32, 32) - 0.5
    print(f"{cpu_name()}, {os.cpu_count()} logical CPUs, {args.threads} threads, torch {torch.__version__}")
    files = sorted(Path(args.pictures).rglob("*.png"))[: args.decode] if args.decode else []
    with tempfile.TemporaryDirectory() as folder:
        engines: dict[str, Engine] = {"eager": model}
        build_optimized = lambda: optimize(model)  # noqa: E731
        if args.build:
            os.environ["TINIEST_COMPILED_CACHE"] = str(Path(folder) / "compiled")  # a machine that never built it
            timed("optimize, first on this machine (export + AOTInductor build + first call)", build_optimized, warmup)
        optimized, _ = timed("optimize, later processes (cached package, 1st call)", build_optimized, warmup)
        engines["optimize"] = optimized
        build_onnx = lambda: onnx_engine(model, Path(folder), args.threads)  # noqa: E731
        engines["onnxruntime"], _ = timed("onnx export + session", build_onnx, warmup)
        compiled = optimized.compiled  # type: ignore[attr-defined]
        print(f"optimize compiled: {compiled}")
        if compiled:
            engines["optimize (intra-op)"] = intra_op(optimized)  # type: ignore[arg-type]
        threaded = {f"{name} + thread per call": per_call_thread(engines[name]) for name in ("eager", "optimize")}

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
        for condition in args.conditions:
            with neighbours(condition):
                print(f"{condition}: load {load()}", flush=True)
                for batch in args.batches:
                    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) - 0.5
                    timed_engines = {**engines, **(threaded if batch == 1 else {})}
                    speeds = throughput(timed_engines, x, args.rounds, args.min_time)
                    eager = speeds["eager"][0]
                    eager_threaded = speeds.get("eager + thread per call", (eager, 0.0))[0]
                    for name, (speed, cpu) in speeds.items():
                        base = eager_threaded if "thread per call" in name else eager
                        rows.append((condition, batch, name, speed, speed / base, cpu))
                if files:
                    rate, ours, plain = decode_cost(files)
                    rows.append((condition, "decode", "decode_image vs Pillow", rate, plain / ours, ours))
                print(f"{condition}: done, load {load()}", flush=True)

    print("\n| neighbours | batch | engine | images/s | vs eager | CPU ms/image |\n|---|---:|---|---:|---:|---:|")
    for condition, batch, name, speed, ratio, cpu in rows:
        print(f"| {condition} | {batch} | {name} | {speed:,.0f} | {ratio:.2f}x | {cpu:.2f} |")
    print("\n(thread-per-call rows are against eager + thread per call; the decode row's ratio is Pillow's CPU / ours)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
