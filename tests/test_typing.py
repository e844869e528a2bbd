"""Type checkers see the public API: a user's script checked with ``mypy --strict`` as their CI would check it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

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


@pytest.mark.slow
def test_mypy_strict_passes_correct_use_and_reports_each_mistake(tmp_path: Path) -> None:
    (tmp_path / "correct.py").write_text(CORRECT, encoding="utf-8")
    (tmp_path / "mistakes.py").write_text("import tiniest\n\n" + "\n".join(MISTAKES) + "\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
         "--cache-dir", str(tmp_path / "cache"), "correct.py", "mistakes.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "MYPYPATH": str(ROOT)},  # the checkout, as an installed copy would be found
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [line for line in errors if line.startswith("correct.py")], done.stdout
    for number, (line, said) in enumerate(MISTAKES.items(), start=3):
        found = [error for error in errors if re.match(rf"mistakes\.py:{number}: error: ", error)]
        assert any(said in error for error in found), f"{line}: {found or 'no error'}\n{done.stdout}"
