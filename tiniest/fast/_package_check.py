"""``python -m tiniest.fast._package_check PACKAGE CASES THREADS``: try a freshly built package in a child process.

A compiled package is native code, and a bad one does not raise: it crashes the process that loads
or runs it. Seen here: torch 2.11 segfaulting while loading a frozen package, and packages whose
batch range the compiler narrowed corrupting memory on other batch sizes. :mod:`tiniest.fast.compiled`
therefore runs every new package here first, on each batch size it will serve, against the eager
module's outputs (``CASES``, written with ``torch.save``); only a package that passes is cached and
loaded into the user's process.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

# Largest |logit difference| accepted against the eager module (measured: about 2e-6).
TOLERANCE = 1e-4


def main(argv: Sequence[str]) -> int:
    package, cases, threads = argv
    torch.set_num_threads(int(threads))  # the generated loops were built for this many
    from tiniest.fast.compiled import open_package

    run = open_package(Path(package))
    data = torch.load(cases, weights_only=True)
    with torch.inference_mode():
        for x, expected in zip(data["inputs"], data["expected"], strict=True):
            got = run(x.contiguous(memory_format=torch.channels_last))
            if got.shape != expected.shape:
                print(f"batch {len(x)}: expected logits of shape {tuple(expected.shape)}, got {tuple(got.shape)}")
                return 1
            difference = (got - expected).abs().max().item()
            if not difference <= TOLERANCE:  # also catches NaN
                print(f"batch {len(x)}: logits differ from the eager module's by {difference:.3g} (> {TOLERANCE})")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
