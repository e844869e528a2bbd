"""Many loader processes for little start-up: one fresh interpreter imports tiniest once, then forks.

Starting an interpreter that imports torch takes seconds, and on a small machine such starts
barely overlap; a process forked after the import starts in milliseconds. Each child is still a
real process (its own pid, file descriptors and file locks). huggingface_hub is not imported
before the fork, so every child reads its own ``HF_ENDPOINT`` and ``HF_HOME`` when it imports it.

``run_forked(jobs)`` runs ``python -m tests.procs`` (bounded by a timeout), which forks one child
per job; ``together=True`` holds them at a gate and releases them at the same moment.
A job is ``{"call": "module:function", "args": [...], "env": {...}}``; its JSON result comes back.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import traceback
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_forked(
    jobs: Sequence[dict[str, Any]], *, together: bool = False, env: dict[str, str] | None = None, timeout: float = 120
) -> list[dict[str, Any]]:
    """Run ``jobs`` in forked children of one fresh interpreter; their results, in order."""
    payload = json.dumps({"jobs": list(jobs), "together": together})
    run = subprocess.run(
        [sys.executable, "-m", "tests.procs"],
        input=payload,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        timeout=timeout,
    )
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-4000:]
    results: list[dict[str, Any]] = json.loads(run.stdout.strip().splitlines()[-1])
    return results


def _main() -> None:
    spec = json.loads(sys.stdin.read())
    import tiniest.weights  # noqa: F401  (the import every child shares)

    assert "huggingface_hub" not in sys.modules, "children must import huggingface_hub with their own settings"
    gate_read, gate_write = os.pipe()
    children = []
    for job in spec["jobs"]:
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run the job, send its result, leave without running the parent's cleanups
            os.close(out_read)
            try:
                os.environ.update(job.get("env", {}))
                if spec["together"]:
                    os.read(gate_read, 1)
                module, name = job["call"].split(":")
                result = {"ok": True, "value": getattr(importlib.import_module(module), name)(*job.get("args", []))}
            except BaseException:
                result = {"ok": False, "error": traceback.format_exc()}
            with os.fdopen(out_write, "w") as out:
                json.dump(result, out)
            os._exit(0)
        os.close(out_write)
        children.append((pid, out_read))
    os.write(gate_write, b"x" * len(children))
    results = []
    for pid, out_read in children:
        with os.fdopen(out_read) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
        results.append(json.loads(text) if text else {"ok": False, "error": "the child sent nothing"})
    print(json.dumps(results))


# --- jobs ---------------------------------------------------------------------------------------------


def load_and_describe(sources: str) -> dict[str, Any]:
    """Load the weights; where from, and a digest of the tensors themselves."""
    from tiniest.weights import load_weights

    loaded = load_weights(sources=sources, progress=False)
    digest = hashlib.sha256()
    for name in sorted(loaded.state_dict):
        digest.update(name.encode() + loaded.state_dict[name].numpy().tobytes())
    return {"source": loaded.source, "verified": loaded.verified, "sha256": loaded.sha256, "digest": digest.hexdigest()}


def hub_scenario(sha256: str) -> dict[str, Any]:
    """Against a faulty Hub (``HF_ENDPOINT``): load with GitHub as fallback, heal the server, load from the Hub."""
    from tests.faults import bad_files
    from tiniest.weights import load_weights

    reasons: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reasons.append(record.getMessage())

    logging.getLogger("tiniest.weights").addHandler(Keep())
    hf_home, torch_home = Path(os.environ["HF_HOME"]), Path(os.environ["TORCH_HOME"])
    result: dict[str, Any] = {}
    first = load_weights(sources="huggingface,github", progress=False)
    result["first"] = [first.source, first.verified, first.sha256 == sha256]
    result["reasons"] = reasons
    result["bad_after_fault"] = bad_files([hf_home, torch_home], sha256)
    result["hub_files_after_fault"] = sorted(str(p.relative_to(hf_home)) for p in hf_home.rglob("*") if p.is_file())
    urllib.request.urlopen(os.environ["HF_ENDPOINT"] + "/_heal", timeout=10).read()
    os.environ["TORCH_HOME"] = str(torch_home) + "-after"
    second = load_weights(sources="huggingface", progress=False)
    result["second"] = [second.source, second.verified, second.sha256 == sha256]
    result["bad_at_end"] = bad_files([hf_home, torch_home, Path(os.environ["TORCH_HOME"])], sha256)
    return result


def load_with_warnings(sources: str, file_size_limit: int | None = None) -> dict[str, Any]:
    """Load the weights and report the warnings; optionally no file may grow past ``file_size_limit`` bytes."""
    import warnings

    from tiniest.weights import load_weights

    if file_size_limit is not None:  # as a full disk does: writes fail part-way (EFBIG here, ENOSPC there)
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_weights(sources=sources, progress=False)
    return {
        "source": loaded.source,
        "verified": loaded.verified,
        "sha256": loaded.sha256,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }


def timed_load(sources: str) -> dict[str, Any]:
    """How long a load takes (imports done before the clock starts), and its source or its error."""
    import time

    import huggingface_hub.file_download  # noqa: F401

    from tiniest.errors import WeightsNotFoundError
    from tiniest.weights import load_weights

    started = time.monotonic()
    try:
        outcome = load_weights(sources=sources, progress=False).source
    except WeightsNotFoundError as error:
        outcome = str(error)
    return {"seconds": time.monotonic() - started, "outcome": outcome}


if __name__ == "__main__":
    _main()
