"""Time a full evaluation two ways, in one run on one machine, and print the ratio.

* plain loop: decode every PNG with PIL, batches of 500, the plain eager model, then the report;
* ``tiniest evaluate`` run a second time, as a user would (decoded-image cache warm, optimized model).

Both run as fresh ``python`` processes timed from the outside, so each pays for interpreter start,
``import torch`` and loading the weights. The project's cache lives in a temporary folder, so the
first (cold) run really decodes. Usage::

    python benchmarks/bench_evaluate.py --data ../shared/cifar10 --weights ../shared/weights/tiniest.pt

``--neighbours loop`` (one core kept busy) or ``matmul`` (two 2-thread matmul loops) times both
beside neighbours that the benchmark starts and stops itself (``benchmarks/neighbours.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neighbours import NEIGHBOURS, neighbours

ROOT = Path(__file__).resolve().parent.parent


def plain_loop(root: Path, batch_size: int) -> None:
    """The baseline a user would write without this project; prints its accuracy as JSON."""
    import numpy as np
    import torch
    from PIL import Image

    import tiniest
    from tiniest.metrics import classification_report

    model = tiniest.tiniest()  # the pinned release, or $TINIEST_WEIGHTS
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((root / name).glob("*.png"))]
    predictions = []
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            chunk = [np.asarray(Image.open(path).convert("RGB")) for path, _ in files[start : start + batch_size]]
            batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 255 - 0.5
            predictions.append(model(batch).argmax(dim=1))
    labels = torch.tensor([label for _, label in files])
    predicted = torch.cat(predictions)
    classification_report(labels, predicted, classes)
    print(json.dumps({"images": len(files), "correct": int((predicted == labels).sum())}))


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return elapsed, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "cifar10", help="image-folder root")
    parser.add_argument("--split", default="test")
    parser.add_argument("--weights", help="weights file (default: $TINIEST_WEIGHTS, else the pinned release)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate both timings this many times; report medians")
    parser.add_argument("--neighbours", choices=list(NEIGHBOURS), default="quiet", help="run beside these")
    parser.add_argument("--plain-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        plain_loop(args.data / args.split, batch_size=500)
        return 0

    import torch

    with tempfile.TemporaryDirectory(prefix="tiniest-bench-") as cache:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "TINIEST_CACHE": cache, "PYTHONPATH": path}  # a checkout works without pip install
        if args.weights:
            env["TINIEST_WEIGHTS"] = str(Path(args.weights).resolve())
        baseline = [sys.executable, str(Path(__file__).resolve()), "--plain-loop", "--data", str(args.data)]
        baseline += ["--split", args.split]
        project = [sys.executable, "-m", "tiniest", "evaluate", "--data", str(args.data), "--split", args.split]
        project += ["--no-progress", "--json", str(Path(cache) / "report.json")]
        with neighbours(args.neighbours):
            cold, _ = timed(project, env)
            plain_times, warm_times = [], []
            for _ in range(args.repeat):
                seconds, out = timed(baseline, env)
                plain_times.append(seconds)
                plain = json.loads(out.strip().splitlines()[-1])
                seconds, _ = timed(project, env)
                warm_times.append(seconds)
                report = json.loads((Path(cache) / "report.json").read_text())
    if (plain["images"], plain["correct"]) != (report["images"], report["correct"]):
        raise SystemExit(f"the two runs disagree: plain loop {plain}, tiniest evaluate {report['correct']} correct")
    plain_s, warm_s = statistics.median(plain_times), statistics.median(warm_times)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"neighbours: {args.neighbours}")
    print(f"images: {plain['images']}, correct: {plain['correct']} (both runs)")
    print(f"plain loop (PIL decode, batches of 500, eager model): {plain_s:.1f} s")
    print(f"tiniest evaluate, first run (decodes, fills the cache): {cold:.1f} s")
    print(f"tiniest evaluate, second run (cache warm, optimized model): {warm_s:.1f} s")
    print(f"speed-up of the second run over the plain loop: {plain_s / warm_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
