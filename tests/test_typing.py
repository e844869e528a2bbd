"""Type checkers see the public API: a user's script checked with ``mypy --strict`` as their CI would check it,
against tiniest installed both ways a user installs it: ``pip install .`` and ``pip install -e .`` (issue 27)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import copy_checkout

pytest.importorskip("mypy")

CORRECT = """
import io
from pathlib import Path

import torch

import tiniest

model: tiniest.Tiniest = tiniest.tiniest(weights=None, device="cpu")
release: tiniest.TiniestWeights = tiniest.TiniestWeights.CIFAR10_V1
published = tiniest.tiniest(weights=tiniest.TiniestWeights.CIFAR10_V1, num_classes=3)
answers = tiniest.predict(
    [Path("cat.png"), b"...", io.BytesIO(b"..."), open("cat.jpg", "rb"), torch.zeros(3, 32, 32)],
    top_k=3,
    weights=tiniest.TiniestWeights.DEFAULT,
)
best: str = answers[0].label
batch: torch.Tensor = tiniest.preprocess("cat.png")
result = tiniest.evaluate(tiniest.TiniestWeights.DEFAULT, "data/cifar10", split="test")
accuracy: float = result.accuracy
prepare: tiniest.Preprocess = tiniest.Preprocess()
loaded = tiniest.Tiniest.from_pretrained("owner/name", revision="main", token=False, device="cpu")
folder: Path = loaded.save_pretrained("out", repo_id="owner/name")
fast = tiniest.optimize(model)
block: torch.nn.Module = tiniest.layer(model, "2-4")
"""

MISTAKES = {  # line -> what mypy must say of it
    "tiniest.predcit('cat.png')": 'Module has no attribute "predcit"',
    "tiniest.predict('cat.png', top_k='three')": 'Argument "top_k" to "predict" has incompatible type "str"',
    "tiniest.tiniest(weights=3)": 'Argument "weights" to "tiniest" has incompatible type "int"',
    "tiniest.predict(3.5)": 'Argument 1 to "predict" has incompatible type "float"',
    "tiniest.Tiniest.from_pretrained('owner/name', revison='main')": 'Unexpected keyword argument "revison"',
    "tiniest.evaluate(tiniest.tiniest(), 'data', batch='big')": 'Unexpected keyword argument "batch"',
}


def require(reason: str) -> None:
    """Skip for ``reason``; under CI (``TINIEST_REQUIRE_PROFILES=1``) a client venv that cannot be built fails."""
    if os.environ.get("TINIEST_REQUIRE_PROFILES") == "1":
        pytest.fail(reason + " (TINIEST_REQUIRE_PROFILES=1 makes it mandatory)")
    pytest.skip(reason)


@pytest.fixture(scope="module", params=["regular", "editable"])
def client_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's venv where tiniest is installed as ``pip install .`` or ``pip install -e .`` leaves it.

    uv builds the package offline (the build backend is in its cache since the dev install) from a copy of
    this checkout, without its dependencies: torch, numpy, Pillow and the rest come from this test's
    environment, named by a .pth file after the venv's own site-packages, as mypy finds any installed library.
    """
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        require("uv is not installed")
    folder = tmp_path_factory.mktemp(request.param)
    source = copy_checkout(folder / "source")
    venv = folder / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    package = ["-e", str(source)] if request.param == "editable" else [str(source)]
    installed = subprocess.run(
        [uv, "pip", "install", "--quiet", "--offline", "--no-deps", "--python", str(python), *package],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if installed.returncode != 0:
        require(f"cannot build tiniest offline from uv's cache: {installed.stderr.strip()[-300:]}")
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "zz-test-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    where = subprocess.run(
        [str(python), "-c", "import tiniest; print(tiniest.__file__)"],
        capture_output=True, text=True, timeout=300, cwd=folder,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    imported = Path(where.stdout.strip().splitlines()[-1])
    # The install is the kind the test names: the source folder itself (editable), or a copy in site-packages
    # with the package data the wheel must carry.
    assert imported.is_relative_to(source) == (request.param == "editable"), imported
    for data in ("py.typed", "weights/release.json", "weights/model_card.md"):
        assert (imported.parent / data).is_file(), f"{data} missing from the {request.param} install"
    return python


@pytest.mark.slow
def test_mypy_strict_passes_correct_use_and_reports_each_mistake(client_python: Path, tmp_path: Path) -> None:
    """``mypy --strict`` as a client runs it on their venv: no MYPYPATH, the package found as installed."""
    (tmp_path / "correct.py").write_text(CORRECT, encoding="utf-8")
    (tmp_path / "mistakes.py").write_text("import tiniest\n\n" + "\n".join(MISTAKES) + "\n", encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if key not in ("MYPYPATH", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-executable", str(client_python), "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), "correct.py", "mistakes.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env=environment,
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [line for line in errors if not line.startswith("mistakes.py")], done.stdout  # none in tiniest either
    for number, (line, said) in enumerate(MISTAKES.items(), start=3):
        found = [error for error in errors if re.match(rf"mistakes\.py:{number}: error: ", error)]
        assert any(said in error for error in found), f"{line}: {found or 'no error'}\n{done.stdout}"
