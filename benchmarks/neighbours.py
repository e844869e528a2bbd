"""Neighbour processes that the benchmarks start and stop themselves, to measure on a busy machine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

NEIGHBOURS = {
    "quiet": [],
    "loop": ["while True: pass"],  # one core kept busy
    "matmul": 2 * ["import torch\ntorch.set_num_threads(2)\na = torch.rand(384, 384)\nwhile True: a @ a"],
}


@contextmanager
def neighbours(name: str) -> Iterator[None]:
    """Run the condition's neighbour processes for the block (started here, killed here)."""
    started = [subprocess.Popen([sys.executable, "-c", code]) for code in NEIGHBOURS[name]]
    try:
        time.sleep(2.0 if started else 0.5)  # let them (and the load figures) settle
        yield
    finally:
        for process in started:
            process.kill()
            process.wait()
