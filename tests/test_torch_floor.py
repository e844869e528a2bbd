"""The declared floor: torch >= 2.3. Below it, ``import tiniest`` and torch.hub say so in one line.

An older torch is faked in a child process: installed metadata saying 2.1.2 comes first on ``sys.path``
(tiniest reads the version there, so that ``tiniest --help`` imports no torch). What is tested is the
check, which must run before any submodule touches what an old torch lacks.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tiniest
from tests.conftest import ROOT, copy_checkout


def test_the_floor_is_written_as_pyproject_declares_it() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is not in Python 3.10)
    floor = ".".join(map(str, tiniest.TORCH_FLOOR))
    assert re.findall(r'^\s*"(torch\b[^"]*)",', pyproject, re.MULTILINE) == [f"torch>={floor}"]
    assert re.findall(r"^requires-python = (.*)$", pyproject, re.MULTILINE) == ['">=3.10"']


@pytest.mark.parametrize(
    ("version", "refused"),
    [
        ("2.1.2", True),
        ("2.2.2+cu121", True),
        ("1.13.1", True),
        ("2.3.0", False),
        ("2.3.1+cpu", False),
        ("2.10.0", False),  # compared as numbers, not as text
        ("2.14.0.dev20260101+cu130", False),
        ("3.0.0a0", False),
        ("not-a-version", False),  # a custom build is let be
    ],
)
def test_versions_below_the_floor_are_refused(version: str, refused: bool) -> None:
    message = tiniest._torch_too_old(version)
    assert (message is not None) is refused
    if message is not None:
        assert message.startswith(f"tiniest needs torch >= 2.3 (installed: {version})") and "\n" not in message


OLD_TORCH = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[2])  # torch-2.1.2.dist-info
    try:
        {call}
    except ImportError as error:
        print(type(error).__name__, "|", error)
    """
)


@pytest.mark.parametrize(
    "call",
    ["import tiniest", 'torch.hub.load(sys.argv[1], "tiniest", source="local", trust_repo=True)'],
)
def test_below_the_floor_import_and_torch_hub_say_which_torch_in_one_line(call: str, tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path / "checkout")
    metadata = tmp_path / "old" / "torch-2.1.2.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.1.2\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-c", OLD_TORCH.format(call=call), str(checkout), str(metadata.parent)],
        capture_output=True,
        text=True,
        cwd=checkout,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "UnsupportedTorchError | tiniest needs torch >= 2.3 (installed: 2.1.2); upgrade it: pip install 'torch>=2.3'"
    ]
