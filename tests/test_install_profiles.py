"""The environments users actually have, not the dev one; each is a real venv, named by a variable.

- ``TINIEST_FLOOR_PYTHON``: torch alone, at the oldest Python and torch that pyproject.toml declares
  (what a notebook with a year-or-two-old torch has, loading through torch.hub).
- ``TINIEST_HUB_PYTHON``: torch alone, Python 3.13 and the newest torch the package index serves.
- ``TINIEST_CORE_PYTHON``: the same Python and torch, then ``pip install .`` without extras.
- ``TINIEST_SCIO_PYTHON``: the real client's environment: Python >= 3.12 with ``scio-pypi`` (and so
  torch), no safetensors.
- ``TINIEST_LOWEST_PYTHON``: the package with its images and plot extras at the lowest versions
  pyproject.toml declares (``uv pip install --resolution lowest-direct``), on the floor Python and torch.
- ``TINIEST_LOWEST_ONNX_PYTHON``: the onnx extra at its lowest declared versions (it asks for torch >= 2.5).

``.ci/run`` builds them all and sets ``TINIEST_REQUIRE_PROFILES=1``, which turns a missing profile
into a failure; elsewhere these tests skip with the command that builds the venv. Each torch-alone
and core profile runs a user's whole session: the published weights, 9,463/10,000 on the CIFAR-10
test split, ``predict``, ``optimize`` and an export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from tests.conftest import ROOT, copy_checkout
from tests.loopback import LoopbackServer
from tiniest.model import Tiniest
from tiniest.weights import SOURCES, TiniestWeights
from tiniest.weights.formats import read_state_dict

pytestmark = pytest.mark.slow  # each profile runs a whole user's session in its own interpreter

RELEASE = TiniestWeights.DEFAULT.release
GITHUB_ROUTE = RELEASE.url.removeprefix("https://github.com")  # the release asset, under any mirror
HUB = RELEASE.where["huggingface"]
HUB_FILE = (HUB["repo_id"], HUB["revision"], HUB["filename"])
INPUT = torch.linspace(-0.5, 0.5, 3 * 32 * 32).reshape(1, 3, 32, 32)
# Anything beyond torch that the torch.hub load path must do without.
EXTRAS_MODULES = ("safetensors", "numpy", "tqdm", "PIL", "huggingface_hub", "matplotlib", "kornia", "onnx")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

def declared_floor(pattern: str, requirements: list[str]) -> str:
    """The X.Y of the first of ``requirements`` that ``pattern`` matches (pyproject.toml's own floors)."""
    return next(match[1] for requirement in requirements if (match := re.fullmatch(pattern, requirement)))


FLOOR_PYTHON = declared_floor(r">=\s*(\d+\.\d+)", [PYPROJECT["requires-python"]])
FLOOR_TORCH = declared_floor(r"torch>=(\d+\.\d+)", PYPROJECT["dependencies"])

BUILD_HINT = {
    "TINIEST_FLOOR_PYTHON": f"python{FLOOR_PYTHON} -m venv /tmp/fl && /tmp/fl/bin/pip install torch=={FLOOR_TORCH}.*",
    "TINIEST_HUB_PYTHON": "python3.13 -m venv /tmp/hub && /tmp/hub/bin/pip install torch",
    "TINIEST_CORE_PYTHON": "python3.13 -m venv /tmp/core && /tmp/core/bin/pip install torch .",
    "TINIEST_SCIO_PYTHON": "python3.13 -m venv /tmp/scio && /tmp/scio/bin/pip install scio-pypi",
    "TINIEST_LOWEST_PYTHON": f"python{FLOOR_PYTHON} -m venv /tmp/low && uv pip install --python /tmp/low/bin/python "
    f"--resolution lowest-direct torch=={FLOOR_TORCH}.1 '.[images,plot]'",
    "TINIEST_LOWEST_ONNX_PYTHON": f"python{FLOOR_PYTHON} -m venv /tmp/lowx && uv pip install --python "
    "/tmp/lowx/bin/python --resolution lowest-direct '.[onnx]'",
}
TORCH_ALONE = ("TINIEST_FLOOR_PYTHON", "TINIEST_HUB_PYTHON")
LOWEST = ("TINIEST_LOWEST_PYTHON", "TINIEST_LOWEST_ONNX_PYTHON")


def profile_python(variable: str) -> Path:
    """The interpreter named by ``variable``, or a skip (a failure under TINIEST_REQUIRE_PROFILES=1)."""
    value = os.environ.get(variable)
    if value and Path(value).exists():
        return Path(value).absolute()  # the tests run it from temporary folders
    reason = f"{variable} names no interpreter; build the profile with: {BUILD_HINT[variable]}"
    if os.environ.get("TINIEST_REQUIRE_PROFILES") == "1":
        pytest.fail(reason + " (TINIEST_REQUIRE_PROFILES=1 makes it mandatory)")
    pytest.skip(reason)


@pytest.fixture(params=TORCH_ALONE, ids=["floor", "newest"])
def hub_python(request: pytest.FixtureRequest) -> Path:
    return profile_python(request.param)


@pytest.fixture
def core_python() -> Path:
    return profile_python("TINIEST_CORE_PYTHON")


@pytest.fixture
def scio_python() -> Path:
    return profile_python("TINIEST_SCIO_PYTHON")


def run_in(python: Path, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python args`` in ``cwd`` with the test's environment (isolated caches, loopback only)."""
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=timeout
    )


def last_json(run: subprocess.CompletedProcess[str]) -> dict:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def missing_modules(python: Path, cwd: Path) -> list[str]:
    code = (
        "import importlib.util, json\n"
        f"print(json.dumps([m for m in {list(EXTRAS_MODULES)!r} if importlib.util.find_spec(m) is None]))\n"
    )
    return list(last_json(run_in(python, ["-c", code], cwd)))  # type: ignore[arg-type]


def versions(python: Path, cwd: Path) -> dict:
    code = (
        "import json, sys, torch\n"
        "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'torch': torch.__version__}))"
    )
    return last_json(run_in(python, ["-c", code], cwd))


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository as torch.hub would unpack it (no tests, no venv, no git)."""
    return copy_checkout(tmp_path / "checkout")


@pytest.fixture(scope="session")
def cifar10_test_tensors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CIFAR-10 test split as uint8 tensors, decoded once by this (dev) interpreter.

    torch alone cannot read PNG; what a bare profile checks is the model under its torch.
    """
    from tests.conftest import SHARED_CIFAR10, shared_path
    from tiniest.data import load_split

    test = load_split(shared_path(SHARED_CIFAR10), "test")
    path = tmp_path_factory.mktemp("cifar10") / "test.pt"
    torch.save({"images": test.images.contiguous(), "labels": test.labels.contiguous()}, path)
    return path


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

# A user's whole session, in a profile: load (torch.hub, or the pip package), the published
# accuracy, predict, optimize and a TorchScript export read back.
USER_SESSION = """
import json, logging, sys, warnings
import torch
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
how, checkout, data_path, out_dir = sys.argv[1:5]
if how == "hub":
    net = torch.hub.load(checkout, "tiniest", source="local", trust_repo=True)
import tiniest
from tiniest.commands import main
from tiniest.weights import load_weights
if how == "pip":
    net = tiniest.tiniest()
loaded = load_weights()
data = torch.load(data_path, weights_only=True)
inputs = data["images"].float() / 255 - 0.5
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fast = tiniest.optimize(net)  # the fast path, as evaluate and predict use it for a whole split
    with torch.no_grad():
        fast_logits = torch.cat([fast(batch) for batch in inputs.split(1000)])
with torch.no_grad():
    logits = net(inputs[:256])
labels = [p.label for p in tiniest.predict(list(data["images"][:64]), model=net)]
assert main(["export", loaded.location, "--format", "torchscript", "--output", out_dir]) == 0
exported = torch.jit.load(next(__import__("pathlib").Path(out_dir).glob("*.torchscript.pt")))
print(json.dumps({
    "package": tiniest.__file__,
    "sha256": loaded.sha256, "verified": loaded.verified,
    "correct": int((fast_logits.argmax(1) == data["labels"]).sum()), "total": len(data["labels"]),
    "predict_agrees": labels == [net.labels[i] for i in logits[:64].argmax(1)],
    "optimize_max_diff": float((fast_logits[:256] - logits).abs().max()),
    "optimize_warnings": [str(w.message) for w in caught],
    "export_max_diff": float((exported(inputs[:256]) - logits).abs().max()),
}))
"""


def run_user_session(python: Path, how: str, checkout: Path, data: Path, release_bytes: bytes, tmp_path: Path) -> dict:
    weights_dir = Path(os.environ["TINIEST_WEIGHTS_DIR"])  # conftest's empty folder for this test
    weights_dir.mkdir(parents=True, exist_ok=True)
    (weights_dir / RELEASE.filename).write_bytes(release_bytes)
    args = ["-c", USER_SESSION, how, str(checkout), str(data), str(tmp_path / "exported")]
    run = run_in(python, args, tmp_path, timeout=1500)  # torch 2.3 runs the 10,000 pictures uncompiled
    result = last_json(run)
    assert (result["sha256"], result["verified"]) == (RELEASE.sha256, True)
    assert (result["correct"], result["total"]) == (9463, 10000)
    assert result["predict_agrees"]
    assert result["optimize_max_diff"] < 1e-4 and result["export_max_diff"] < 1e-4
    assert "Traceback" not in run.stderr, run.stderr
    result["stderr"] = run.stderr
    return result


def reference_logits(release_bytes: bytes) -> list[float]:
    """The same input through the release weights in this (dev) interpreter."""
    net = Tiniest().eval()
    net.load_state_dict(read_state_dict(release_bytes))
    with torch.no_grad():
        return [float(v) for v in net(INPUT)[0]]


def assert_published_model(run: subprocess.CompletedProcess[str], expected: list[float]) -> None:
    """The model loaded, gives the reference logits, and its verified file is now cached."""
    result = last_json(run)
    assert (result["source"], result["sha256"], result["verified"]) == ("cache", RELEASE.sha256, True)
    assert result["training"] is False
    assert result["logits"] == pytest.approx(expected, abs=1e-5)


def test_the_declared_floors_are_the_floor_profile(tmp_path: Path) -> None:
    """requires-python and the torch lower bound are exactly what the floor profile runs."""
    found = versions(profile_python("TINIEST_FLOOR_PYTHON"), tmp_path)
    assert found["python"] == FLOOR_PYTHON
    assert found["torch"].startswith(FLOOR_TORCH + "."), found


def test_hub_profile_holds_torch_alone_as_hubconf_declares(hub_python: Path, tmp_path: Path) -> None:
    assert sorted(missing_modules(hub_python, tmp_path)) == sorted(EXTRAS_MODULES)
    code = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('hubconf', sys.argv[1])\n"
        "hubconf = importlib.util.module_from_spec(spec)\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "spec.loader.exec_module(hubconf)\n"
        "print(json.dumps(hubconf.dependencies))\n"
    )
    assert last_json(run_in(hub_python, ["-c", code, str(ROOT / "hubconf.py"), str(ROOT)], tmp_path)) == ["torch"]


def test_hub_profile_downloads_from_github_with_default_arguments(
    hub_python: Path,
    checkout: Path,
    server: LoopbackServer,
    release_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    asset = GITHUB_ROUTE
    server.serve(asset, release_bytes)
    run = run_in(hub_python, ["-c", HUB_LOAD, str(checkout)], tmp_path)
    assert_published_model(run, reference_logits(release_bytes))
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
    """Only the publisher's .pt exists online (no release asset, no Hub repo): torch alone converts it."""
    monkeypatch.setenv("TINIEST_GITHUB_URL", server.url)
    server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
    run = run_in(hub_python, ["-c", HUB_LOAD, str(checkout)], tmp_path)
    assert_published_model(run, reference_logits(release_bytes))
    assert f"/{RELEASE.source_path}" in server.paths_requested()


def test_hub_profile_reads_the_original_pt_given_as_weights(
    hub_python: Path, checkout: Path, shared_checkpoint: Path, tmp_path: Path
) -> None:
    code = (
        "import json, sys, torch\n"
        "net = torch.hub.load(sys.argv[1], 'tiniest', source='local', trust_repo=True, weights=sys.argv[2])\n"
        "print(json.dumps(sum(p.numel() for p in net.parameters())))\n"
    )
    run = run_in(hub_python, ["-c", code, str(checkout), str(shared_checkpoint)], tmp_path)
    assert last_json(run) == 97_530


def test_hub_profile_runs_a_users_session(
    hub_python: Path, checkout: Path, cifar10_test_tensors: Path, release_bytes: bytes, tmp_path: Path
) -> None:
    result = run_user_session(hub_python, "hub", checkout, cifar10_test_tensors, release_bytes, tmp_path)
    assert Path(result["package"]).is_relative_to(checkout)
    if not torch_version_at_least(hub_python, tmp_path, "2.6"):  # no AOTInductor packages before 2.6
        notes = [message for message in result["optimize_warnings"] if "uncompiled" in message]
        assert len(notes) == 1 and "cannot build AOTInductor packages" in notes[0], result["optimize_warnings"]


def torch_version_at_least(python: Path, cwd: Path, floor: str) -> bool:
    found = tuple(int(part) for part in versions(python, cwd)["torch"].split("+")[0].split(".")[:2])
    return found >= tuple(int(part) for part in floor.split("."))


def test_core_profile_has_no_extras_and_a_real_install(core_python: Path, tmp_path: Path) -> None:
    # huggingface_hub and safetensors are core dependencies, and huggingface_hub brings tqdm
    core = {"huggingface_hub", "tqdm", "safetensors"}
    assert sorted(missing_modules(core_python, tmp_path)) == sorted(set(EXTRAS_MODULES) - core)
    run = run_in(core_python, ["-c", "import tiniest; print(tiniest.__file__)"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "site-packages" in run.stdout and Path(run.stdout.strip()).parent != ROOT / "tiniest"


def test_core_profile_runs_a_users_session(
    core_python: Path, checkout: Path, cifar10_test_tensors: Path, release_bytes: bytes, tmp_path: Path
) -> None:
    result = run_user_session(core_python, "pip", checkout, cifar10_test_tensors, release_bytes, tmp_path)
    assert "site-packages" in result["package"]


SHADOWED = """
import sys, torch
if sys.argv[2] == "import-first":
    import tiniest
net = torch.hub.load(sys.argv[1], "tiniest", source="local", trust_repo=True, sources="local")
import tiniest
from tiniest.weights import load_weights
print(tiniest.__file__, load_weights(sources="local").location)
"""


@pytest.mark.parametrize("order", ["import-first", "hub-first"])
def test_a_pip_installed_copy_never_runs_in_a_checkouts_place(
    order: str, core_python: Path, checkout: Path, release_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.hub.load(DIR) runs DIR's code with DIR's weights/, or refuses in one line naming both packages."""
    (checkout / "weights" / RELEASE.filename).write_bytes(release_bytes)
    monkeypatch.delenv("TINIEST_WEIGHTS_DIR")
    run = run_in(core_python, ["-c", SHADOWED, str(checkout), order], tmp_path)
    if order == "import-first":
        last = run.stderr.strip().splitlines()[-1]
        assert run.returncode == 1 and last.startswith("ImportError: torch.hub.load("), run.stderr
        assert "site-packages" in last and str(checkout / "tiniest") in last, last
    else:
        package, weights = last_line(run).split()
        assert Path(package).is_relative_to(checkout) and Path(weights).is_relative_to(checkout / "weights")


def last_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1]


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


# scio's tutorials record layers by torchinfo's depth-index: (1, 5) the third Block, (1, 11) the
# global pooling, (1, 12) the classifier (the model card's layer table).
SCIO_SESSION = """
import json, sys, torch
from scio.eval import compute_confidence, fit_scores
from scio.recorder import Recorder
from scio.scores import KNN, GradNorm, Gram

net = torch.hub.load("ThalesGroup/scio:hub", "tiniest", trust_repo=True)
from tiniest.model import Tiniest  # the hub checkout's package, imported by the load above
reference = Tiniest().eval()  # the publisher's checkpoint, read by torch alone
reference.load_state_dict(torch.load(sys.argv[2], map_location="cpu", weights_only=True))
data = torch.load(sys.argv[1], weights_only=True)
images = data["images"][:400].float() / 255 - 0.5
noise = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0)) - 0.5
layers = {"KNN": [(1, 11)], "GradNorm": [(1, 12)], "Gram": [(1, 5)]}
rnet = Recorder(net, input_size=(1, 3, 32, 32))
rnet.record((1, 5), (1, 11), (1, 12))
rows = {idx: type(module).__name__ for idx, module in rnet.recorded_modules.items()}

def confidences(model):
    scores = [(KNN(k=5), layers["KNN"]), (GradNorm(), layers["GradNorm"]), (Gram(), layers["Gram"])]
    fitted = fit_scores(scores, model, images[:300], data["labels"][:300], show_progress=False)
    ind, (ood,) = compute_confidence(fitted, ind=images[300:], oods=(noise,), show_progress=False)
    return ind, ood

ind, ood = confidences(net)
ref_ind, ref_ood = confidences(reference)
print(json.dumps({
    "rows": {str(k): v for k, v in rows.items()},
    "shapes": [list(ind.shape), list(ood.shape)],
    "finite": bool(torch.isfinite(torch.as_tensor(ind)).all() and torch.isfinite(torch.as_tensor(ood)).all()),
    "max_diff": float(max(abs(ind - ref_ind).max(), abs(ood - ref_ood).max())),
    "safetensors": "safetensors" in sys.modules,
}))
"""


def test_scio_runs_its_scores_on_the_hub_model_without_safetensors(
    scio_python: Path,
    cifar10_test_tensors: Path,
    release_bytes: bytes,
    shared_checkpoint: Path,
    tmp_path: Path,
) -> None:
    """As scio's documentation build does: the checkout in torch.hub's cache as ThalesGroup_scio_hub."""
    assert "safetensors" in missing_modules(scio_python, tmp_path)
    copy_checkout(Path(os.environ["TORCH_HOME"]) / "hub" / "ThalesGroup_scio_hub")
    weights_dir = Path(os.environ["TINIEST_WEIGHTS_DIR"])
    weights_dir.mkdir(parents=True, exist_ok=True)
    (weights_dir / RELEASE.filename).write_bytes(release_bytes)
    run = run_in(scio_python, ["-c", SCIO_SESSION, str(cifar10_test_tensors), str(shared_checkpoint)], tmp_path)
    result = last_json(run)
    assert result["rows"] == {"(1, 5)": "Block", "(1, 11)": "AdaptiveAvgPool2d", "(1, 12)": "Linear"}
    assert result["shapes"] == [[3, 100], [3, 40]] and result["finite"]
    assert result["max_diff"] < 1e-3, "the hub model scores as the publisher's checkpoint does"
    assert result["safetensors"] is False


def test_profiles_never_use_the_dev_interpreter() -> None:
    """A profile pointing at the dev venv would test nothing: each must be its own interpreter."""
    for variable in (*TORCH_ALONE, "TINIEST_CORE_PYTHON", "TINIEST_SCIO_PYTHON", *LOWEST):
        value = os.environ.get(variable)
        if value:
            assert Path(value).resolve() != Path(sys.executable).resolve(), variable


# The package and its extras at the lowest versions pyproject.toml declares (``uv pip install
# --resolution lowest-direct``), on the floor Python: every source (the Hub through the real
# huggingface_hub client against a loopback endpoint), predict, evaluate and a TorchScript export.
# The onnx extra asks for torch >= 2.5 (torch.onnx.export(dynamo=True)): its own profile, below.
LOWEST_SESSION = """
import json, os, shutil, sys
from pathlib import Path
import torch
from PIL import Image
import tiniest
from tiniest.commands import main
from tiniest.weights import load_weights

work = Path(sys.argv[1])
torch_home = Path(os.environ["TORCH_HOME"])
found = {}
for source in ("github", "cache", "original", "huggingface", "local"):
    loaded = load_weights(sources=source, progress=False)
    found[source] = [loaded.source, loaded.verified, loaded.sha256]
    if source == "cache":  # the next downloads start from an empty torch cache
        shutil.rmtree(torch_home / "hub" / "checkpoints")
net = tiniest.tiniest(sources="local")
photo = work / "photo.png"
Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
(prediction,) = tiniest.predict([str(photo)], model=net, top_k=3)
report = tiniest.evaluate(net, sys.argv[2], split="test")
assert main(["export", str(Path(os.environ["TINIEST_WEIGHTS_DIR"]) / "tiniest.pt"), "--format", "torchscript",
             "--output", str(work / "exported")]) == 0
import importlib.metadata as metadata
print(json.dumps({
    "sources": found, "label": prediction.label, "top": len(prediction.top),
    "correct": int((report.predictions == report.labels).sum()), "total": len(report.labels),
    "exported": sorted(p.name for p in (work / "exported").iterdir()),
    "versions": {name: metadata.version(name) for name in ("torch", "huggingface_hub", "safetensors", "pillow")},
}))
"""


def test_lowest_declared_versions_run_every_source_predict_evaluate_and_export(
    server: LoopbackServer, release_bytes: bytes, shared_checkpoint: Path, shared_cifar10: Path, tmp_path: Path
) -> None:
    from tests.loopback import serve_like_the_hub

    python = profile_python("TINIEST_LOWEST_PYTHON")
    server.serve(GITHUB_ROUTE, release_bytes)
    server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
    serve_like_the_hub(server, *HUB_FILE, release_bytes)
    weights = Path(os.environ["TINIEST_WEIGHTS_DIR"])
    weights.mkdir(parents=True, exist_ok=True)
    (weights / "tiniest.pt").write_bytes(shared_checkpoint.read_bytes())
    data = tmp_path / "data" / "test"
    for name in ("cat", "ship"):  # a small image folder: two classes of CIFAR-10's test split
        (data / name).mkdir(parents=True)
        for picture in sorted((shared_cifar10 / "test" / name).iterdir())[:20]:
            shutil.copy(picture, data / name / picture.name)
    env = {**os.environ, "TINIEST_GITHUB_URL": server.url, "HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(
        [str(python), "-c", LOWEST_SESSION, str(tmp_path), str(tmp_path / "data")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900,
    )  # fmt: skip
    result = last_json(run)
    assert result["sources"] == {name: [name, True, RELEASE.sha256] for name in SOURCES}, result
    assert result["top"] == 3 and result["total"] == 40 and result["correct"] >= 36, result
    assert any(name.endswith(".torchscript.pt") for name in result["exported"]), result
    floors = {name: declared(name) for name in ("huggingface_hub", "safetensors")} | {"torch": FLOOR_TORCH}
    for name, floor in floors.items():
        assert result["versions"][name].startswith(floor), (name, result["versions"][name], floor)


LOWEST_ONNX_SESSION = """
import json, sys
import numpy, onnxruntime, torch
import importlib.metadata as metadata
import tiniest
from tiniest.commands import main
from tiniest.model import Tiniest
assert main(["export", sys.argv[1], "--format", "onnx", "--output", sys.argv[2]]) == 0
(exported,) = [p for p in __import__("pathlib").Path(sys.argv[2]).iterdir() if p.suffix == ".onnx"]
net = Tiniest().eval()
net.load_state_dict(torch.load(sys.argv[1], map_location="cpu", weights_only=True))
x = torch.linspace(-0.5, 0.5, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
(ours,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
with torch.no_grad():
    reference = net(x).numpy()
print(json.dumps({"max_diff": float(numpy.abs(ours - reference).max()),
                  "versions": {n: metadata.version(n) for n in ("torch", "onnx", "onnxscript", "onnxruntime")}}))
"""


def test_lowest_declared_onnx_extra_exports_a_model_onnxruntime_runs(shared_checkpoint: Path, tmp_path: Path) -> None:
    python = profile_python("TINIEST_LOWEST_ONNX_PYTHON")
    args = ["-c", LOWEST_ONNX_SESSION, str(shared_checkpoint), str(tmp_path / "exported")]
    result = last_json(run_in(python, args, tmp_path))
    assert result["max_diff"] < 1e-4, result
    onnx_extra = PYPROJECT["optional-dependencies"]["onnx"]
    for name in ("onnx", "onnxscript", "onnxruntime", "torch"):
        assert result["versions"][name].startswith(declared_floor(rf"{name}\s*>=\s*([\d.]+)", onnx_extra)), result


def declared(package: str) -> str:
    """The lowest version pyproject.toml allows for ``package`` (``>=X.Y`` in the core dependencies)."""
    return declared_floor(rf"^{re.escape(package)}\s*>=\s*([\d.]+)", PYPROJECT["dependencies"])
