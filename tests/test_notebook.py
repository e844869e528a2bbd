"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel, and is committed without outputs."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_committed_notebook_is_stripped() -> None:
    """Outputs would hold CIFAR-10 pictures (never committed) and go stale; CI produces them."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert all(not cell.get("attachments") for cell in notebook.cells)


def test_notebook_runs_in_a_kernel(
    shared_checkpoint: Path, shared_cifar10: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cell runs without error, offline, with the weights and pictures of ../shared."""
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint.resolve()))
    monkeypatch.setenv("TINIEST_DATA", str(shared_cifar10.resolve()))
    monkeypatch.setenv(
        "MPLBACKEND", "module://matplotlib_inline.backend_inline"
    )  # figures as outputs, even if Agg is set
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # a failing cell raises CellExecutionError with its traceback

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 5, "grid, confusion matrix, mistakes, photo, activations"
    text = "".join(output.get("text", "") for output in outputs)
    accuracy = re.search(r"accuracy on 1000 test images: ([0-9.]+)", text)
    assert accuracy is not None and float(accuracy.group(1)) >= 0.92, text
    assert "l1.pool  (8, 12, 32, 32)" in text  # layer (2, 4) of the model card: [*, 12, 32, 32]
