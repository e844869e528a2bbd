"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel, from any folder; committed without outputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.conftest import SHARED_CIFAR10, copy_checkout, shared_path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
PER_CLASS = 110  # the notebook measures 100 per class and shows 2 more


def test_committed_notebook_is_stripped() -> None:
    """Outputs would hold CIFAR-10 pictures (never committed) and go stale; CI produces them."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert all(not cell.get("attachments") for cell in notebook.cells)


def small_test_split(target: Path) -> Path:
    """CIFAR-10's first PER_CLASS test pictures of each class, as an image folder (decoding all 10,000 is slow)."""
    source = shared_path(SHARED_CIFAR10) / "test"
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / "test" / folder.name).mkdir(parents=True)
        for picture in sorted(folder.glob("*.png"))[:PER_CLASS]:
            shutil.copyfile(picture, target / "test" / folder.name / picture.name)
    return target


def run(folder: Path, kernel: str = "python3") -> nbformat.NotebookNode:
    """The notebook executed in a kernel whose working folder is ``folder`` (outside the checkout)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(folder)}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback
    return notebook


@pytest.mark.slow
def test_notebook_runs_in_a_kernel_from_any_folder(
    shared_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell runs without error, offline, with the weights and pictures of ../shared, from a folder elsewhere."""
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint.resolve()))
    monkeypatch.setenv("TINIEST_DATA", str(small_test_split(tmp_path / "cifar10")))
    monkeypatch.setenv("TINIEST_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as outputs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    notebook = run(elsewhere)

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 5, "grid, confusion matrix, mistakes, photo, activations"
    text = "".join(output.get("text", "") for output in outputs)
    assert f"code from {ROOT}" in text  # this checkout, found from its installed package
    accuracy = re.search(r"accuracy on 1000 test images: ([0-9.]+)", text)
    assert accuracy is not None and float(accuracy.group(1)) >= 0.92, text
    assert re.search(r"as taken, 640x480 +ship", text), text  # the painted boat is a ship
    assert "l1.pool  (8, 12, 32, 32)" in text  # layer (2, 4) of the model card: [*, 12, 32, 32]


@pytest.mark.parametrize("missing", ["data", "weights"])
@pytest.mark.slow
def test_missing_data_or_weights_is_one_line_saying_what_to_set(
    missing: str, shared_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINIEST_OFFLINE", "1")  # no download to fall back on
    if missing == "data":
        monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint.resolve()))
        (tmp_path / "empty" / "test").mkdir(parents=True)
        monkeypatch.setenv("TINIEST_DATA", str(tmp_path / "empty"))
    with pytest.raises(CellExecutionError) as failed:
        run(tmp_path)
    message = str(failed.value)
    assert "SystemExit" in message and f"set TINIEST_{missing.upper()}" in message, message
    assert "Sample larger than population" not in message


def pip_installed(venv: Path, checkout: Path) -> Path:
    """A venv where tiniest is a plain (non-editable) install of ``checkout``, built offline from uv's cache; the
    libraries it needs come from this test's environment (a .pth after its own site-packages): no network."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [uv, "pip", "install", "--quiet", "--offline", "--no-deps", "--python", str(python), str(checkout)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if installed.returncode != 0:
        pytest.skip(f"cannot build tiniest offline from uv's cache: {installed.stderr.strip()[-300:]}")
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "zz-test-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return Path(site)


@pytest.mark.slow
def test_notebook_runs_offline_in_a_pip_install_without_a_checkout(
    shared_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29: a pip install found no checkout above site-packages and went to GitHub for the code. With
    TINIEST_DATA and TINIEST_WEIGHTS alone, offline, from a folder elsewhere, every cell runs on the installed
    package."""
    site = pip_installed(tmp_path / "venv", copy_checkout(tmp_path / "source"))
    shutil.rmtree(tmp_path / "source")  # no checkout left anywhere to find
    kernels = tmp_path / "jupyter" / "kernels" / "pip-install"
    kernels.mkdir(parents=True)
    argv = [str(tmp_path / "venv" / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "tiniest pip install", "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint.resolve()))
    monkeypatch.setenv("TINIEST_DATA", str(small_test_split(tmp_path / "cifar10")))
    monkeypatch.setenv("TINIEST_OFFLINE", "1")
    monkeypatch.delenv("TINIEST_CHECKOUT", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    notebook = run(elsewhere, kernel="pip-install")

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs)
    assert f"code from {site}" in text, text  # the installed package, not this checkout
    assert len([output for output in outputs if "image/png" in output.get("data", {})]) == 5
    assert re.search(r"accuracy on 1000 test images: 0\.9[2-9]", text), text
    assert os.environ.get("TINIEST_CHECKOUT") is None
