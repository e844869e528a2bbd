"""Extra start-up cost of ``torch.hub.load(checkout, "tiniest", source="local")`` over ``import torch``.

Each run is a fresh interpreter with the release file already in torch.hub's cache (built
from ``../shared/weights/tiniest.pt`` into a temporary TORCH_HOME): the situation of a
notebook's second session. Prints the median over runs.

    python benchmarks/bench_load.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT.parent / "shared" / "weights" / "tiniest.pt"

PROBE = """
import json, sys, time
start = time.perf_counter()
import torch
imported = time.perf_counter()
net = torch.hub.load(sys.argv[1], "tiniest", source="local", trust_repo=True)
loaded = time.perf_counter()
print(json.dumps({"import_torch": imported - start, "hub_load": loaded - imported}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as torch_home:
        env = {**os.environ, "TORCH_HOME": torch_home}
        cache = Path(torch_home) / "hub" / "checkpoints"
        export = [sys.executable, "-m", "tiniest", "export", str(CHECKPOINT), "--output", str(cache)]
        subprocess.run(export, check=True, env=env, capture_output=True)
        samples = []
        for _ in range(args.runs):
            out = subprocess.run(
                [sys.executable, "-c", PROBE, str(ROOT)], check=True, env=env, capture_output=True, text=True, cwd=cache
            )
            samples.append(json.loads(out.stdout))
    hub = statistics.median(s["hub_load"] for s in samples) * 1000
    torch_ms = statistics.median(s["import_torch"] for s in samples) * 1000
    print(f"runs: {args.runs}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"import torch (median):                       {torch_ms:8.1f} ms")
    print(f"torch.hub.load(..., source='local') (median): {hub:8.1f} ms extra, weights from the cache")


if __name__ == "__main__":
    main()
