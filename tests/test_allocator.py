from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from tests.procs import ROOT
from tiniest.allocator import keep_freed_memory

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only"
)

# Four 12 MiB tensors alive at once, freed, again and again: the pattern of a model's activations.
CHURN = """
import json, resource, sys, torch
from tiniest.allocator import keep_freed_memory

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def churn(rounds=20):
    before = faults()
    for _ in range(rounds):
        tensors = [torch.ones(3 << 20) for _ in range(4)]
        del tensors
    return faults() - before

default = churn()
changed = keep_freed_memory()
print(json.dumps({"default": default, "changed": changed, "kept": churn()}))
"""


@glibc_only
def test_freed_activations_are_reused_instead_of_faulted_in_again() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", CHURN], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts["changed"] is True
    # 20 rounds x 48 MiB is about 245,000 pages; kept memory is faulted in about once.
    assert counts["default"] > 100_000, counts
    assert counts["kept"] < counts["default"] / 5, counts


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"])
def test_an_allocator_the_user_configured_is_left_alone(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    assert keep_freed_memory() is False
