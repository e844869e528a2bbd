"""torch.hub on the real code paths: a local checkout and the GitHub-style ``OWNER/REPO:hub``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiniest
from tests.conftest import ROOT, copy_checkout
from tiniest.errors import UsageError, WeightsNotFoundError
from tiniest.weights import TiniestWeights, torch_cache_path

RELEASE = TiniestWeights.DEFAULT.release


@pytest.fixture
def cached_release(release_bytes: bytes) -> Path:
    """The release file already in torch.hub's cache, as after a first download."""
    path = torch_cache_path(RELEASE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(release_bytes)
    return path


HUB_REPO = f"{RELEASE.where['github']['repo']}:hub"


def prefill_hub_dir(hub_dir: Path) -> Path:
    """Put a copy of this checkout where torch.hub keeps ``OWNER/REPO:hub`` after a download."""
    owner, name = RELEASE.where["github"]["repo"].split("/")
    checkout = hub_dir / f"{owner}_{name}_hub"
    return copy_checkout(checkout)


@pytest.fixture
def hub_dir() -> Path:
    """torch.hub's folder (``$TORCH_HOME/hub``, a fresh one per test) holding a link to this checkout.

    A link, not a copy: this process already imported ``tiniest`` from ROOT, and hubconf refuses to
    run a different folder's code under it (tests of copies run in fresh interpreters).
    """
    hub = Path(torch.hub.get_dir())
    owner, name = RELEASE.where["github"]["repo"].split("/")
    hub.mkdir(parents=True, exist_ok=True)
    (hub / f"{owner}_{name}_hub").symlink_to(ROOT, target_is_directory=True)
    return hub


def test_hub_lists_only_the_entrypoint(hub_dir: Path) -> None:
    assert torch.hub.list(HUB_REPO, trust_repo=True, skip_validation=True) == ["tiniest"]


def test_help_explains_every_argument(hub_dir: Path) -> None:
    text = torch.hub.help(HUB_REPO, "tiniest", trust_repo=True, skip_validation=True)
    for argument in ("weights", "progress", "sources", "device", "offline"):
        assert f"{argument}:" in text
    flat = " ".join(text.split())
    assert "``tiniest(weights=None)``: a random initialisation" in flat and "``TINIEST_WEIGHTS``" in flat
    assert "weights passed always win" in flat and "num_classes:" in text


def test_local_load_returns_the_published_model_ready_for_inference(cached_release: Path) -> None:
    net = torch.hub.load(str(ROOT), "tiniest", source="local", trust_repo=True)
    assert isinstance(net, tiniest.Tiniest) and not net.training
    assert sum(p.numel() for p in net.parameters()) == 97_530
    direct = tiniest.tiniest()
    x = torch.rand(4, 3, 32, 32) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(net(x), direct(x), rtol=0, atol=0)


CUDA_HERE = torch.cuda.device_count() if torch.cuda.is_available() else 0
MISSING = "cuda" if not CUDA_HERE else f"cuda:{CUDA_HERE}"  # a device this machine lacks


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_weights_none_is_a_random_initialisation_as_in_torchvision(cached_release: Path) -> None:
    published = tiniest.tiniest()
    for net in (tiniest.tiniest(weights=None, device="cpu"), torch.hub.load(str(ROOT), "tiniest", source="local",
                                                                          trust_repo=True, weights=None)):
        assert not net.training and next(net.parameters()).device.type == "cpu"
        assert net.meta == {} and not same_weights(net, published), "random, not the release"
    assert published.meta and same_weights(published, tiniest.tiniest(weights=TiniestWeights.DEFAULT))


def test_a_device_this_machine_lacks_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match=rf"^device '{MISSING}' is not available: [^\n]*available: cpu") as caught:
        tiniest.tiniest(weights=None, device=MISSING)
    assert "\n" not in str(caught.value)


def test_tiniest_weights_applies_only_where_no_weights_are_passed(
    cached_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights passed always win, ``TiniestWeights.DEFAULT`` included; the variable fills in for weights left out."""
    monkeypatch.setenv("TINIEST_WEIGHTS", str(tmp_path / "elsewhere.safetensors"))
    with pytest.raises(WeightsNotFoundError, match=r"^TINIEST_WEIGHTS: .*elsewhere\.safetensors does not exist"):
        tiniest.tiniest()
    with pytest.raises(WeightsNotFoundError, match=r"elsewhere\.safetensors does not exist"):
        torch.hub.load(str(ROOT), "tiniest", source="local", trust_repo=True)  # a tutorial's default call
    for weights in (TiniestWeights.DEFAULT, TiniestWeights.CIFAR10_V1, "CIFAR10_V1", "DEFAULT"):
        assert tiniest.tiniest(weights=weights).meta, f"{weights!r} passed wins over TINIEST_WEIGHTS"
        assert tiniest.load_weights(weights).verified
    assert tiniest.tiniest(weights=None).meta == {}, "so does a random initialisation"


def test_load_weights_refuses_none_in_one_line_naming_what_to_pass() -> None:
    with pytest.raises(UsageError, match=r"^load_weights\(None\): expected weights to load .*got None") as caught:
        tiniest.load_weights(None)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("pretrained", [True, False])
def test_pretrained_is_refused_in_one_line_naming_the_weights_to_pass(pretrained: bool) -> None:
    """torch.hub users type ``pretrained=`` from habit: one line says what to write instead, never a second meaning."""
    instead = "weights=TiniestWeights.DEFAULT" if pretrained else "weights=None"
    with pytest.raises(UsageError, match=rf"^tiniest\(\) takes weights=, not pretrained=: .*; pass {instead}$"):
        tiniest.tiniest(pretrained=pretrained)  # type: ignore[call-arg]
    with pytest.raises(UsageError, match=re.escape(instead)):
        torch.hub.load(str(ROOT), "tiniest", source="local", trust_repo=True, pretrained=pretrained)
    with pytest.raises(TypeError):
        tiniest.tiniest(pretrained)  # type: ignore[misc]


def test_num_classes_gives_the_published_trunk_a_new_head(cached_release: Path) -> None:
    published = tiniest.tiniest()
    net = tiniest.tiniest(num_classes=3)
    assert net.fc.weight.shape == (3, 80) and not net.training
    assert net.labels == ("class_0", "class_1", "class_2") and net.meta["head"].startswith("new: 3 outputs")
    assert "categories" not in net.meta and net.meta["preprocessing"] == published.meta["preprocessing"]
    trunk = {k: v for k, v in published.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in trunk.items()), "the published trunk"
    same = tiniest.tiniest(num_classes=10)
    assert same_weights(same, published) and same.labels == published.labels and "head" not in same.meta
    assert tiniest.tiniest(weights=None, num_classes=4).fc.out_features == 4
    for bad in (0, -1, True, 2.5):
        with pytest.raises(UsageError, match=r"^num_classes: expected a positive int, got"):
            tiniest.tiniest(weights=None, num_classes=bad)  # type: ignore[arg-type]


def hub_subprocess(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter outside the checkout, as a notebook would be."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=dict(os.environ))


def test_github_style_repo_from_a_prefilled_hub_dir(
    release_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_dir = tmp_path / "hub"
    checkout = prefill_hub_dir(hub_dir)
    (checkout / "weights" / "dropped-in.safetensors").write_bytes(release_bytes)
    monkeypatch.delenv("TINIEST_WEIGHTS_DIR")  # the checkout's own weights/ folder
    code = (
        "import torch, sys\n"
        f"torch.hub.set_dir({str(hub_dir)!r})\n"
        f"net = torch.hub.load({HUB_REPO!r}, 'tiniest', trust_repo=True, skip_validation=True)\n"
        "from tiniest.weights import load_weights\n"
        "print(type(net).__name__, net.training, load_weights().source, sys.modules['tiniest'].__file__)\n"
    )
    run = hub_subprocess(code, tmp_path)
    assert run.returncode == 0, run.stderr
    kind, training, source, package = run.stdout.split()
    assert (kind, training, source) == ("Tiniest", "False", "local")
    assert Path(package).is_relative_to(checkout), "the hub checkout's own package must be the one used"


def test_loading_does_not_import_heavy_modules(cached_release: Path, tmp_path: Path) -> None:
    code = (
        "import sys, torch\n"
        f"net = torch.hub.load({str(ROOT)!r}, 'tiniest', source='local', trust_repo=True)\n"
        "heavy = ['huggingface_hub', 'PIL', 'kornia', 'onnx', 'onnxruntime', 'matplotlib', 'httpx2']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    run = hub_subprocess(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


SHADOWED = (
    "import sys, torch\n"
    "{first}\n"
    "net = torch.hub.load(sys.argv[1], 'tiniest', source='local', trust_repo=True, sources='local')\n"
    "{then}\n"
    "from tiniest.weights import load_weights\n"
    "print(sys.modules['tiniest'].__file__, load_weights(sources='local').location)\n"
)


@pytest.mark.parametrize("imported_first", [True, False], ids=["import-then-hub", "hub-then-import"])
def test_hub_load_runs_the_folders_own_code_or_refuses_naming_both(
    imported_first: bool, release_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another tiniest (here: this checkout, as the dev install imports it) never runs in a checkout's place."""
    checkout = copy_checkout(tmp_path / "checkout")
    (checkout / "weights" / RELEASE.filename).write_bytes(release_bytes)
    monkeypatch.delenv("TINIEST_WEIGHTS_DIR")  # each checkout's own weights/ folder
    first, then = ("import tiniest", "") if imported_first else ("", "import tiniest")
    code = SHADOWED.format(first=first, then=then)
    run = subprocess.run(
        [sys.executable, "-c", code, str(checkout)], capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ)
    )
    if imported_first:
        assert run.returncode == 1
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: torch.hub.load(") and "Traceback" in run.stderr
        assert str(ROOT / "tiniest") in last and str(checkout / "tiniest") in last, last
    else:
        assert run.returncode == 0, run.stderr
        package, weights = run.stdout.split()
        assert Path(package).is_relative_to(checkout) and Path(weights).is_relative_to(checkout / "weights")
