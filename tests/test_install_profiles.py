"""The environments users actually have, not the dev one.

- ``TINIEST_HUB_PYTHON``: the interpreter of a venv holding exactly ``hubconf.dependencies``
  (what a torch.hub user has: torch and safetensors, no numpy, tqdm, PIL or huggingface_hub).
- ``TINIEST_CORE_PYTHON``: the interpreter of a venv where ``pip install .`` ran without extras.

``.ci/run`` builds both and sets ``TINIEST_REQUIRE_PROFILES=1``, which turns a missing profile
into a failure; elsewhere these tests skip with the command that builds the venv.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, copy_checkout
from tests.loopback import LoopbackServer
from tiniest.model import Tiniest
from tiniest.weights import TiniestWeights

RELEASE = TiniestWeights.DEFAULT.release
INPUT = torch.linspace(-0.5, 0.5, 3 * 32 * 32).reshape(1, 3, 32, 32)
# Anything beyond hubconf.dependencies that the core load path must do without.
EXTRAS_MODULES = ("numpy", "tqdm", "PIL", "huggingface_hub", "matplotlib", "kornia", "onnx")

BUILD_HINT = {
    "TINIEST_HUB_PYTHON": "python -m venv /tmp/hub && /tmp/hub/bin/pip install torch==2.13.0 safetensors",
    "TINIEST_CORE_PYTHON": "python -m venv /tmp/core && /tmp/core/bin/pip install torch==2.13.0 .",
}


def profile_python(variable: str) -> Path:
    """The interpreter named by ``variable``, or a skip (a failure under TINIEST_REQUIRE_PROFILES=1)."""
    value = os.environ.get(variable)
    if value and Path(value).exists():
        return Path(value).absolute()  # the tests run it from temporary folders
    reason = f"{variable} names no interpreter; build the profile with: {BUILD_HINT[variable]}"
    if os.environ.get("TINIEST_REQUIRE_PROFILES") == "1":
        pytest.fail(reason + " (TINIEST_REQUIRE_PROFILES=1 makes it mandatory)")
    pytest.skip(reason)


@pytest.fixture
def hub_python() -> Path:
    return profile_python("TINIEST_HUB_PYTHON")


@pytest.fixture
def core_python() -> Path:
    return profile_python("TINIEST_CORE_PYTHON")


def run_in(python: Path, args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``python args`` in ``cwd`` with the test's environment (isolated caches, loopback only)."""
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=timeout
    )


def missing_modules(python: Path, cwd: Path) -> list[str]:
    code = (
        "import importlib.util, json\n"
        f"print(json.dumps([m for m in {list(EXTRAS_MODULES)!r} if importlib.util.find_spec(m) is None]))\n"
    )
    run = run_in(python, ["-c", code], cwd)
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository as torch.hub would unpack it (no tests, no venv, no git)."""
    return copy_checkout(tmp_path / "checkout")


HUB_LOAD = (
    "import json, sys, torch\n"
    "net = torch.hub.load(sys.argv[1], 'tiniest', source='local', trust_repo=True)\n"
    "from tiniest.weights import load_weights\n"
    "loaded = load_weights(offline=True)\n"  # what the first load left in the cache
    "x = torch.linspace(-0.5, 0.5, 3 * 32 * 32).reshape(1, 3, 32, 32)\n"
    "with torch.no_grad():\n"
    "    logits = net(x)\n"
    "print(json.dumps({'source': loaded.source, 'sha256': loaded.sha256, 'verified': loaded.verified,\n"
    "                  'training': net.training, 'logits': logits[0].tolist()}))\n"
)


def reference_logits(release_bytes: bytes) -> list[float]:
    """The same input through the release weights in this (dev) interpreter."""
    import torch
    from safetensors.torch import load

    net = Tiniest().eval()
    net.load_state_dict(load(release_bytes))
    with torch.no_grad():
        return [float(v) for v in net(INPUT)[0]]


def assert_published_model(run: subprocess.CompletedProcess[str], expected: list[float]) -> None:
    """The model loaded, gives the reference logits, and its verified file is now cached."""
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert (result["source"], result["sha256"], result["verified"]) == ("cache", RELEASE.sha256, True)
    assert result["training"] is False
    assert result["logits"] == pytest.approx(expected, abs=1e-5)


def test_hub_profile_holds_exactly_the_hubconf_dependencies(hub_python: Path, tmp_path: Path) -> None:
    assert sorted(missing_modules(hub_python, tmp_path)) == sorted(EXTRAS_MODULES)
    hubconf = (ROOT / "hubconf.py").read_text(encoding="utf-8")
    assert 'dependencies = ["torch", "safetensors"]' in hubconf


def test_hub_profile_downloads_from_github_with_default_arguments(
    hub_python: Path,
    checkout: Path,
    server: LoopbackServer,
    release_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    asset = f"/{RELEASE.github_repo}/releases/download/{RELEASE.github_tag}/{RELEASE.filename}"
    server.serve(asset, release_bytes)
    expected = reference_logits(release_bytes)
    run = run_in(hub_python, ["-c", HUB_LOAD, str(checkout)], tmp_path)
    assert_published_model(run, expected)
    assert server.paths_requested() == [asset]


def test_hub_profile_converts_the_original_checkpoint_alone(
    hub_python: Path,
    checkout: Path,
    server: LoopbackServer,
    shared_checkpoint: Path,
    release_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Only the publisher's .pt exists online (no release asset, no Hub repo): no numpy needed."""
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
    expected = reference_logits(release_bytes)
    run = run_in(hub_python, ["-c", HUB_LOAD, str(checkout)], tmp_path)
    assert_published_model(run, expected)
    assert f"/{RELEASE.source_path}" in server.paths_requested()


def test_hub_profile_reads_the_original_pt_given_as_weights(
    hub_python: Path, checkout: Path, shared_checkpoint: Path, release_bytes: bytes, tmp_path: Path
) -> None:
    code = (
        "import json, sys, torch\n"
        "net = torch.hub.load(sys.argv[1], 'tiniest', source='local', trust_repo=True, weights=sys.argv[2])\n"
        "print(json.dumps(sum(p.numel() for p in net.parameters())))\n"
    )
    run = run_in(hub_python, ["-c", code, str(checkout), str(shared_checkpoint)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == 97_530


def test_core_profile_has_no_extras_and_a_real_install(core_python: Path, tmp_path: Path) -> None:
    # huggingface_hub is a core dependency, and it brings tqdm
    assert sorted(missing_modules(core_python, tmp_path)) == sorted(set(EXTRAS_MODULES) - {"huggingface_hub", "tqdm"})
    run = run_in(core_python, ["-c", "import tiniest; print(tiniest.__file__)"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "site-packages" in run.stdout and Path(run.stdout.strip()).parent != ROOT / "tiniest"


def test_core_profile_loads_and_classifies(core_python: Path, shared_checkpoint: Path, tmp_path: Path) -> None:
    code = (
        "import json, sys, torch, tiniest\n"
        "net = tiniest.tiniest(weights=sys.argv[1])\n"
        "x = torch.zeros(2, 3, 32, 32)\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(list(net(x).shape)))\n"
    )
    run = run_in(core_python, ["-c", code, str(shared_checkpoint)], tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [2, 10]


def own_lines(stderr: str) -> list[str]:
    """stderr without torch's own warning at ``import torch`` when numpy is absent (two lines)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "Failed to initialize NumPy" in line:
            return lines[:index] + lines[index + 2 :]
    return lines


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["predict", "photo.jpg"], "images"),
        (["evaluate", "--data", "folder"], "images"),
        (["train", "--data", "folder", "--output", "run"], "train"),
    ],
)
def test_core_profile_commands_name_the_missing_extra(
    core_python: Path, tmp_path: Path, command: list[str], extra: str
) -> None:
    cli = core_python.parent / "tiniest"
    assert cli.exists(), "pip install must put the console script in the venv"
    run = subprocess.run(
        [str(cli), *command], capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ), timeout=120
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr
    lines = own_lines(run.stderr)
    assert len(lines) == 1, run.stderr
    assert f'pip install "tiniest[{extra}]"' in lines[0]
