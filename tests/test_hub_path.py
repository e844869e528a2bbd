"""What ``torch.hub.load`` runs: a few hundred statements, and none of the publishing or training code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tiniest.weights import TiniestWeights

# statements (ast.stmt nodes, docstrings included) of hubconf.py and every tiniest module a load from a
# folder imports: 687 with the release file, 690 with the publisher's .pt (1,634 before the rewrite)
BUDGET = 700
NOT_ON_THE_PATH = (  # publishing, training and checkpoint formats, and what only a download or a named file needs
    *("tiniest.release", "tiniest.training", "tiniest.commands", "tiniest.export", "tiniest.weights.metadata"),
    *("tiniest.weights.run_files", "tiniest.weights.hub_folder", "tiniest.weights.artifact"),
    *("tiniest.weights.downloads", "tiniest.weights.fetch", "tiniest.weights.huggingface", "tiniest.weights.named"),
    *("tiniest.weights.heads", "tiniest.weights.beside", "tiniest.weights.torch_files", "tiniest.storage"),
)

LOAD = """
import json, sys, torch
model = torch.hub.load(sys.argv[1], "tiniest", source="local", trust_repo=True, progress=False)
assert model.labels[3] == "cat"
print(json.dumps(sorted(name for name in sys.modules if name == "tiniest" or name.startswith("tiniest."))))
"""


def statements(path: Path) -> int:
    return sum(isinstance(node, ast.stmt) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


@pytest.mark.parametrize("published", ["the release file", "the publisher's .pt"])
def test_the_torch_hub_load_path_is_small_and_imports_no_publishing_code(
    published: str, shared_checkpoint: Path, release_bytes: bytes, tmp_path: Path
) -> None:
    """Loaded from a weights folder holding either published file: the local source, a reader, the model."""
    folder = tmp_path / "weights"
    folder.mkdir()
    if published == "the release file":
        (folder / TiniestWeights.DEFAULT.release.filename).write_bytes(release_bytes)
    else:
        (folder / "tiniest.pt").write_bytes(shared_checkpoint.read_bytes())
    env = {"TINIEST_WEIGHTS_DIR": str(folder), "TINIEST_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", LOAD, str(ROOT)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    modules = json.loads(run.stdout.strip().splitlines()[-1])
    imported = [name for name in modules if name.startswith(NOT_ON_THE_PATH)]
    assert imported == [], f"publishing, training or download code on the load path: {imported}"
    files = [ROOT / "hubconf.py"]
    for name in modules:
        base = ROOT.joinpath(*name.split("."))
        files.append(base / "__init__.py" if base.is_dir() else base.with_suffix(".py"))
    total = sum(statements(path) for path in files)
    assert total <= BUDGET, f"{total} statements in {len(files)} files: {', '.join(modules)}"
