"""The public surface, listed: a change that drops or renames a name fails here, not in a user's notebook.

Adding a name is fine (add it below too); removing one is a breaking change that needs a new major version.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import subprocess
import sys

import torch

import tiniest
from tests.conftest import ROOT
from tiniest.commands import build_parser

PACKAGE_NAMES = {
    "Block",
    "CLASSES",
    "LayerNorm2d",
    "Preprocess",
    "Tiniest",
    "TiniestWeights",
    "UnverifiedWeightsWarning",
    "WeightsNotFoundError",
    "evaluate",
    "layer",
    "load_weights",
    "optimize",
    "predict",
    "preprocess",
    "tiniest",
}

COMMANDS: dict[str, tuple[list[str], str]] = {
    "export": (["checkpoint"], "--filename --format --license --metrics --output -o"),
    "predict": (["images"], "--eager --json --plot --top-k --weights"),
    "evaluate": ([], "--batch-size --data --eager --json --no-progress --plot --skip-unreadable --split --weights"),
    "train": (
        [],
        "--batch-size --data --device --ema-decay --epochs --final-div-factor --init --limit-test --limit-train --lr"
        " --mixup --no-augment --no-progress --output -o --overwrite --plot --resume --seed --skip-unreadable"
        " --stop-after --val-fraction --warmup",
    ),
    "release": (
        ["source"],
        "--github-repo --hf-repo-id --hf-revision --license --metrics --name --output -o --overwrite --tag",
    ),
}

ENVIRONMENT = {
    "TINIEST_CACHE",
    "TINIEST_COMPILED_CACHE",
    "TINIEST_DIST_TIMEOUT",
    "TINIEST_GITHUB_TOKEN",
    "TINIEST_GITHUB_URL",
    "TINIEST_NO_COMPILE",
    "TINIEST_OFFLINE",
    "TINIEST_TIMEOUT",
    "TINIEST_WEIGHTS",
    "TINIEST_WEIGHTS_DIR",
}

ENTRYPOINT_ARGUMENTS = ["weights", "progress", "sources", "device", "offline", "num_classes"]


def test_package_names() -> None:
    assert set(tiniest.__all__) >= PACKAGE_NAMES
    for name in tiniest.__all__:
        assert getattr(tiniest, name) is not None, name
    assert callable(tiniest.predict) and callable(tiniest.optimize) and callable(tiniest.preprocess)
    assert callable(tiniest.evaluate) and callable(tiniest.layer)


def test_every_public_name_is_listed_by_dir_and_help_before_any_is_used() -> None:
    """In a fresh process: the lazy names are in dir() and help() without being imported by ``import tiniest``.

    help() opens with the API index (the module docstring) before pydoc's full class pages: each nn.Module
    class of ``__all__`` brings ~1,050 lines of inherited nn.Module methods, which pydoc cannot leave out.
    """
    script = (
        "import pydoc, sys, tiniest\n"
        "listed = [name for name in tiniest.__all__ if name in dir(tiniest)]\n"
        "lazy = sorted(m for m in ('tiniest.inference', 'tiniest.evaluation', 'tiniest.fast') if m in sys.modules)\n"
        "text = pydoc.render_doc(tiniest, renderer=pydoc.plaintext)\n"
        "import json; print(json.dumps([listed, lazy, text]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed, imported_before_help, text = json.loads(done.stdout)
    assert listed == tiniest.__all__ and imported_before_help == [], "all listed, none imported by import tiniest"
    for name in ("predict(images", "preprocess(x", "class Preprocess", "evaluate(weights_or_model", "optimize(model"):
        assert name in text, name
    index = text[: text.index("PACKAGE CONTENTS")]
    names = ("tiniest(", "predict(", "preprocess", "Preprocess", "evaluate(", "optimize(", "layer(")
    assert all(f"``{name}" in index for name in names), index


def test_hubconf_exposes_one_entrypoint_with_its_arguments() -> None:
    tree = ast.parse((ROOT / "hubconf.py").read_text(encoding="utf-8"))
    public = [
        node.names[0].asname or node.names[0].name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and not node.names[0].name.startswith("_")
    ]
    assert public == ["tiniest"]
    parameters = inspect.signature(tiniest.tiniest).parameters
    assert list(parameters)[: len(ENTRYPOINT_ARGUMENTS)] == ENTRYPOINT_ARGUMENTS
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ENTRYPOINT_ARGUMENTS)
    assert parameters["weights"].default is tiniest.weights.NOT_GIVEN  # TINIEST_WEIGHTS, else the DEFAULT


def test_cli_commands_and_flags() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) >= set(COMMANDS)
    for name, (positionals, flags) in COMMANDS.items():
        actions = subparsers.choices[name]._actions
        assert [a.dest for a in actions if not a.option_strings] == positionals, name
        assert {o for a in actions for o in a.option_strings} >= set(flags.split()), name


def test_environment_variables_are_read_and_documented() -> None:
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "tiniest").rglob("*.py"))
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the README and the documentation site
    documentation = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    read = set(re.findall(r"TINIEST_[A-Z_]+", source))
    assert read >= ENVIRONMENT
    undocumented = sorted(name for name in read if name not in documentation)
    assert not undocumented, f"environment variables read but not in the documentation: {undocumented}"


def test_hub_folder_methods() -> None:
    assert inspect.ismethod(tiniest.Tiniest.from_pretrained)  # a classmethod
    assert callable(tiniest.Tiniest.save_pretrained)
    assert isinstance(tiniest.Tiniest(), torch.nn.Module)


def test_every_library_the_tests_import_is_declared() -> None:
    """A test's import must come from pyproject.toml: declared, or required by a declared library itself.

    ``markdown_it`` came only through import-linter's rich: a step away from being dropped unnoticed.
    """
    from importlib import metadata

    import tomllib

    def name(requirement: str) -> str:
        found = re.match(r"[A-Za-z0-9_.\-]+", requirement)
        assert found is not None, requirement
        return re.sub(r"[-_.]+", "-", found.group(0)).lower()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {name(r) for r in project["dependencies"]}
    declared |= {name(r) for extra in project["optional-dependencies"].values() for r in extra}
    allowed = set(declared)
    for dist in declared:
        try:
            allowed |= {name(r) for r in metadata.requires(dist) or [] if "extra ==" not in r}
        except metadata.PackageNotFoundError:  # (an extra not installed here)
            continue
    providers = metadata.packages_distributions()
    undeclared: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in {"tiniest", "tests", "hubconf"}:
                    continue
                for dist in providers.get(top, [top]):
                    if name(dist) not in allowed:
                        undeclared.setdefault(name(dist), set()).add(path.relative_to(ROOT).as_posix())
    assert undeclared == {}, f"imported by the tests but declared nowhere in pyproject.toml: {undeclared}"


def test_the_version_has_one_source() -> None:
    """pyproject.toml reads the version from ``tiniest.__version__``; the installed metadata says the same."""
    import importlib.metadata

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tiniest.__version__"}
    assert importlib.metadata.version("tiniest") == tiniest.__version__
