"""The weights paths with only what ``hubconf.dependencies`` promises: torch alone.

A child process of the dev interpreter runs with numpy, tqdm, Pillow, safetensors and huggingface_hub
made unimportable (``sys.modules[name] = None`` makes ``import name`` fail exactly as in a bare environment), and
with the package copied alone into a folder, as a wheel installs it: no ``weights/`` beside it.
The real bare environments are built in CI; this runs the same code paths in every test run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEAD_ENDPOINT, ROOT
from tests.loopback import LoopbackServer
from tiniest.weights import TiniestWeights

RELEASE = TiniestWeights.DEFAULT.release
GITHUB_ROUTE = RELEASE.url.removeprefix("https://github.com")  # the release asset, under any mirror
UNIMPORTABLE = ("numpy", "tqdm", "PIL", "safetensors", "huggingface_hub")
BARE = f"import sys\nfor name in {UNIMPORTABLE!r}:\n    sys.modules[name] = None\n"


def wheel_layout(tmp_path: Path) -> Path:
    """The package alone in a site folder, as ``pip install`` leaves it (no checkout around it)."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "tiniest", site / "tiniest", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def run_bare(code: str, site: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    unwanted = ("TINIEST_WEIGHTS", "TINIEST_WEIGHTS_DIR", "TINIEST_TIMEOUT")
    base = {k: v for k, v in os.environ.items() if k not in unwanted}
    return subprocess.run(
        [sys.executable, "-c", BARE + code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "PYTHONPATH": str(site), **env},
        timeout=300,
    )


def test_every_weights_path_works_without_numpy_tqdm_or_pillow(
    server: LoopbackServer, shared_checkpoint: Path, tmp_path: Path
) -> None:
    """Default arguments (progress on) down to the original .pt, the only source online today; the .pt by
    path, by TINIEST_WEIGHTS and in a weights folder; ``tiniest export``; the message when nothing is found."""
    server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())  # github: 404, the Hub: refused
    site = wheel_layout(tmp_path)
    dropped = tmp_path / "dropped"
    dropped.mkdir()
    shutil.copy(shared_checkpoint, dropped / "tiniest.pt")
    code = f"""
import hashlib, json, os
import tiniest
from tiniest.commands import main
from tiniest.errors import WeightsNotFoundError
from tiniest.weights import load_weights
out = {{"package": tiniest.__file__}}
first = load_weights()
out["first"] = [first.source, first.verified]
out["model"] = [type(tiniest.tiniest()).__name__, load_weights().source]
out["path"] = load_weights({str(shared_checkpoint)!r}).verified
os.environ["TINIEST_WEIGHTS"] = {str(shared_checkpoint)!r}
out["env"] = [load_weights().source, load_weights().verified]
del os.environ["TINIEST_WEIGHTS"]
os.environ["TINIEST_WEIGHTS_DIR"] = {str(dropped)!r}
out["folder"] = load_weights(sources="local").source
del os.environ["TINIEST_WEIGHTS_DIR"]
out["export"] = main(["export", {str(shared_checkpoint)!r}, "--output", "exported"])  # writing needs safetensors
out["torchscript"] = main(["export", {str(shared_checkpoint)!r}, "--format", "torchscript", "--output", "ts"])
os.environ["TORCH_HOME"] = "empty-torch-home"
try:
    load_weights(sources="local,cache")
except WeightsNotFoundError as error:
    out["not_found"] = str(error)
print(json.dumps(out))
"""
    env = {"TINIEST_GITHUB_URL": server.url, "HF_ENDPOINT": DEAD_ENDPOINT}
    run = run_bare(code, site, env, tmp_path)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(out["package"]).is_relative_to(site), "the copied package, not the checkout, is the one used"
    assert out["first"] == ["original", True]
    assert out["model"] == ["Tiniest", "cache"]
    assert out["path"] is True and out["env"] == ["file", True] and out["folder"] == "local"
    assert out["export"] == 1 and "writing a .safetensors file needs safetensors: pip install safetensors" in run.stderr
    assert out["torchscript"] == 0
    assert "put it in a folder named by TINIEST_WEIGHTS_DIR" in out["not_found"], out["not_found"]
    assert f"put it in {site}" not in out["not_found"], "never into site-packages"
    assert 'Downloading: "' in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert "weights source huggingface failed" in run.stderr and "weights source github failed" in run.stderr


@pytest.mark.parametrize("source", ["github", "original"])
def test_first_download_with_progress_on_and_no_tqdm(
    source: str, server: LoopbackServer, release_bytes: bytes, shared_checkpoint: Path, tmp_path: Path
) -> None:
    """The progress bar is tqdm's where tqdm exists; without it, the URL on stderr is all, and the load works."""
    if source == "github":
        server.serve(GITHUB_ROUTE, release_bytes)
    else:
        server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
    code = f"from tiniest.weights import load_weights\nprint(load_weights(sources={source!r}, progress=True).source)"
    run = run_bare(code, wheel_layout(tmp_path), {"TINIEST_GITHUB_URL": server.url}, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [source]
    assert [line for line in run.stderr.splitlines() if line.startswith("Downloading")] == [
        f'Downloading: "{server.url}/{server.requests[0][1].lstrip("/")}"'
    ], run.stderr
    assert "Traceback" not in run.stderr and "%|" not in run.stderr, "no tqdm bar, no error"
