from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from tests.procs import ROOT
from tiniest.fast.allocator import keep_freed_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only"
)

# Page faults over ten forward passes of the model at batch 64, after three passes of warm-up, with
# glibc's defaults or after keep_freed_memory(): each pass allocates and frees tens of MB of
# activations. The warm-up matters: glibc moves its mmap threshold as blocks are freed, so the
# first passes of either mode fault a varying amount (65,000-190,000 over five passes).
FORWARD_PASSES = """
import json, resource, sys, torch
import tiniest
from tiniest.fast.allocator import keep_freed_memory

torch.set_num_threads(1)  # the faults are the same on 1-16 threads; one never waits on a descheduled peer
model = tiniest.Tiniest().eval()
x = torch.rand(64, 3, 32, 32) - 0.5
changed = keep_freed_memory() if sys.argv[1] == "keep" else None
with torch.inference_mode():
    for _ in range(3):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        model(x)
print(json.dumps({"changed": changed, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def forward_pass_faults(mode: str) -> tuple[bool | None, int]:
    """``(what keep_freed_memory returned, or None when not called; page faults)`` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}
    command = [sys.executable, "-c", FORWARD_PASSES, mode]
    # a bound for a hung child only: the count of page faults does not depend on how long the passes take
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    return result["changed"], int(result["faults"])


@glibc_only
@pytest.mark.slow
def test_freed_activations_are_reused_instead_of_faulted_in_again() -> None:
    _, default = forward_pass_faults("default")
    changed, kept = forward_pass_faults("keep")
    assert changed is True
    # Measured on 1-16 threads: 130,000-340,000 faults with glibc's defaults, 0-6,500 when kept.
    assert kept * 10 < default, (default, kept)


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"])
def test_an_allocator_the_user_configured_is_left_alone(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    assert keep_freed_memory() is False
