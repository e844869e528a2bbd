"""``main([tiniest_root, torch_root, package, cases, threads])``: try a freshly built package in a child process.

A compiled package is native code, and a bad one does not raise: it crashes the process that loads
or runs it. Seen here: torch 2.11 segfaulting while loading a frozen package, and packages whose
batch range the compiler narrowed corrupting memory on other batch sizes. ``tiniest.fast.compiled``
therefore runs every new package here first, on each batch size it will serve, against the eager
module's outputs (``CASES``, written with ``torch.save``); only a package that passes is cached and
loaded into the user's process. The child runs isolated (``python -I``) with the parent's
``tiniest`` and torch put on its path by ``tiniest.fast.compiled.check_in_child``; it refuses
to judge with any other.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

# Largest |logit difference| accepted against the eager module (measured: about 2e-6).
TOLERANCE = 1e-4


def main(argv: Sequence[str]) -> int:
    tiniest_root, torch_root, package, cases, threads = argv
    from tiniest.fast import compiled

    for name, found, root in (
        ("tiniest", Path(compiled.__file__).resolve().parents[2], tiniest_root),
        ("torch", Path(torch.__file__).resolve().parents[1], torch_root),
    ):
        if found != Path(root):
            print(f"the check imported {name} from {found}, expected the parent's, in {root}")
            return 1
    torch.set_num_threads(int(threads))  # as the caller runs it

    run = compiled.open_package(Path(package))
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
