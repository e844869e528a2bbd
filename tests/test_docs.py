"""The README and the documentation pages say what works: their runnable snippets run as written.

A snippet is runnable when the line right before its fence is ``<!-- runnable -->`` and the fence is
``bash`` or ``python``. The snippets of one page run in order in one temporary folder, as a user
would type them, with the user's own files stood in for: ``cat.jpg`` and ``boat.png`` (CIFAR-10
test pictures, enlarged), ``tiniest.pt`` (the publisher's checkpoint), ``$TINIEST_DATA`` (a small
CIFAR-10 image folder), the weights in ``$TINIEST_WEIGHTS_DIR``, and no network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_CHECKPOINT, SHARED_CIFAR10, copy_checkout, shared_path

MARKER = "<!-- runnable -->"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
USER_PAGES = [page for page in PAGES if page.name not in {"contributing.md", "internals.md"}]
FENCE = re.compile(r"```(\w*)\s*$")
README_MOST_LINES = 200
PER_CLASS = {"train": 10, "test": 10}  # 200 pictures: enough for a tiny run, a few seconds to decode


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.language})"


def snippets(page: Path) -> list[Snippet]:
    """The runnable snippets of ``page``, in order; a marker not followed by a bash or python fence is an error."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for number, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = FENCE.match(lines[number + 1]) if number + 1 < len(lines) else None
        where = f"{page.relative_to(ROOT)}:{number + 1}"
        assert fence and fence[1] in ("bash", "python"), f"{where}: {MARKER} must precede a ```bash or ```python fence"
        end = next(i for i in range(number + 2, len(lines)) if lines[i].strip() == "```")
        found.append(Snippet(page, number + 2, fence[1], "\n".join(lines[number + 2 : end]) + "\n"))
    return found


RUNNABLE = {page: found for page in PAGES if (found := snippets(page))}


@pytest.fixture(scope="module")
def small_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-10 image folder with a few pictures per class and split, copied from ../shared."""
    source = shared_path(SHARED_CIFAR10)
    root = tmp_path_factory.mktemp("cifar10")
    for split, count in PER_CLASS.items():
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (root / split / folder.name).mkdir(parents=True)
            for picture in sorted(folder.glob("*.png"))[:count]:
                shutil.copyfile(picture, root / split / folder.name / picture.name)
    return root


@pytest.fixture
def workspace(tmp_path: Path, small_cifar10: Path, isolated_caches: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder: two pictures, the publisher's checkpoint, data and weights where the pages say."""
    from PIL import Image

    checkpoint = shared_path(SHARED_CHECKPOINT)
    for name, (folder, size) in {"cat.jpg": ("cat", (320, 240)), "boat.png": ("ship", (128, 128))}.items():
        picture = sorted((small_cifar10 / "test" / folder).glob("*.png"))[0]
        Image.open(picture).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(tmp_path / name)
    shutil.copyfile(checkpoint, tmp_path / "tiniest.pt")
    weights_dir = isolated_caches / "weights"  # TINIEST_WEIGHTS_DIR: the pinned release is found there, verified
    weights_dir.mkdir(exist_ok=True)
    shutil.copyfile(checkpoint, weights_dir / "tiniest.pt")
    monkeypatch.setenv("TINIEST_DATA", str(small_cifar10))
    monkeypatch.setenv("TINIEST_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TINIEST_NO_COMPILE", "1")  # a first build takes ~30 s; the pages are checked, not the compiler
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # `tiniest`
    return tmp_path


@pytest.mark.parametrize("page", list(RUNNABLE), ids=lambda page: str(page.relative_to(ROOT)))
@pytest.mark.slow
def test_runnable_snippets_run_as_written(page: Path, workspace: Path) -> None:
    for snippet in RUNNABLE[page]:
        script = workspace / ("snippet.sh" if snippet.language == "bash" else "snippet.py")
        script.write_text(snippet.code, encoding="utf-8")
        command = ["bash", "-e", "-o", "pipefail"] if snippet.language == "bash" else [sys.executable]
        done = subprocess.run([*command, str(script)], cwd=workspace, capture_output=True, text=True, timeout=300)
        output = f"{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, f"{snippet} failed ({done.returncode}):\n{snippet.code}\n{output}"


def test_user_pages_name_no_developer_folder() -> None:
    """Users have no ../shared: commands point at their own copies (``$TINIEST_DATA``, a file of theirs)."""
    offending = [
        f"{page.relative_to(ROOT)}:{number}"
        for page in USER_PAGES
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if "../shared" in line or "shared/cifar10" in line
    ]
    assert not offending, offending


def test_readme_is_short_and_points_to_the_pages() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MOST_LINES
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", readme))
    assert linked and all((ROOT / link).is_file() for link in linked), linked


def test_every_page_is_in_the_site() -> None:
    """A page left out of mkdocs.yml's nav would be built but never reached."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {page.name for page in (ROOT / "docs").iterdir() if page.suffix in (".md", ".ipynb")}
    assert pages and all(f": {name}" in nav for name in pages), pages


def test_the_commands_help_sends_no_one_to_a_page_a_pip_install_lacks() -> None:
    """A pip install has no docs/ folder and no README: the help says what a user needs itself (issue 29)."""
    from tiniest.commands import build_parser

    subparsers = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    texts = [text for sub in subparsers.values() for text in (sub.description, sub.epilog)]
    texts += [action.help for sub in subparsers.values() for action in sub._actions]
    pointers = [text for text in texts if text and re.search(r"docs/|\.md\b|README", text)]
    assert not pointers, pointers


def test_the_training_page_uploads_what_publish_uploads() -> None:
    """A new release's .pt names no classes: its release.json travels with it, on the page as in PUBLISH.md."""
    from tiniest.release import RECORD_NAME

    page = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    command = next(line for line in page.splitlines() if line.startswith("gh release create "))
    uploaded = command.split()[4: command.split().index("--repo")]
    assert uploaded == ["build/try/tiniest-<sha8>.safetensors", "build/try/tiniest-<sha8>.pt",
                        f"build/try/{RECORD_NAME}"]


def test_the_code_layout_names_every_module_and_every_layer() -> None:
    """CONTRIBUTING.md's "How the code is laid out": each module of tiniest/ named, the layers as lint-imports has
    them."""
    import tomllib

    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8").split("## How the code is laid out", 1)[1]
    tree, _, diagram = text.split("```")[1:4]
    from tiniest.commands import COMMANDS

    package = ROOT / "tiniest"
    modules = [path.relative_to(package) for path in package.rglob("*.py")]
    named = [path for path in modules if not (len(path.parts) > 1 and path.name == "__init__.py")  # its folder
             and not (path.parent.name == "commands" and path.stem in COMMANDS)]  # "one thin module per command"
    unnamed = [str(path) for path in named if not re.search(rf"(?<![\w.]){re.escape(path.name)}", tree)]
    assert not unnamed, unnamed
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = [layer.replace("tiniest.", "") for layer in contracts["contracts"][0]["layers"]]
    assert [" ".join(part.split()) for part in diagram.split(">")] == layers


def test_the_api_reference_has_what_the_pages_tell_users_to_call() -> None:
    """Every top-level name is listed; train(RunOptions(...)) and make_release, which pages name, have entries."""
    import tiniest

    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert [name for name in tiniest.__all__ if f"`tiniest.{name}`" not in api] == []
    entries = set(re.findall(r"^::: (\S+)", api, flags=re.MULTILINE))
    assert {"tiniest.training.train", "tiniest.training.RunOptions", "tiniest.release.make_release"} <= entries


RAW_ROLE = re.compile(r":(class|func|data|mod|meth|attr|exc|obj):(`|<code)")  # as written, or as Markdown renders it


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation site as ``mkdocs build --strict`` makes it, with an empty notebook cache (so the
    notebook runs where ../shared is present); a warning fails the build."""
    folder = tmp_path_factory.mktemp("site")
    environment = {**os.environ, "TINIEST_DOCS_CACHE": str(folder / "cache"), "NO_MKDOCS_2_WARNING": "1"}
    environment.pop("TINIEST_DOCS_EXECUTE", None)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=environment,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return folder / "site"


@pytest.mark.slow
def test_the_site_shows_no_raw_sphinx_roles_and_returns_read_as_sentences(built_site: Path) -> None:
    """Docstrings are Markdown for mkdocstrings: a ``:class:`...``` role would show as typed (issue 29). A
    Returns section is one sentence, never split into a Name column or several rows."""
    pages = sorted(built_site.rglob("*.html"))
    assert built_site / "api" / "index.html" in pages
    raw = {str(page.relative_to(built_site)): len(found)
           for page in pages if (found := RAW_ROLE.findall(page.read_text(encoding="utf-8")))}
    assert raw == {}, f"raw roles left (page: count): {raw}"
    api = (built_site / "api" / "index.html").read_text(encoding="utf-8")
    sections = re.findall(r'doc-section-title">Returns:</span>.*?</table>', api, flags=re.DOTALL)
    assert sections, "no Returns section on the API page"
    for section in sections:
        header = re.findall(r"<th>(\w+)</th>", section)
        rows = re.findall(r'<div class="doc-md-description">\s*(.*?)\s*</div>', section, flags=re.DOTALL)
        text = [" ".join(re.sub(r"<[^>]+>", "", row).split()) for row in rows]
        assert "Name" not in header and len(text) == 1, (header, text)
        assert re.fullmatch(r"[A-Z].*\.", text[0]), f"not a sentence: {text[0]!r}"


@pytest.mark.slow
def test_the_notebook_page_shows_its_figures_where_the_data_is(built_site: Path) -> None:
    """Built with ../shared at hand, the notebook runs (offline, on a subset) and its page holds its five figures;
    without, the page says how to see them."""
    page = (built_site / "quickstart" / "index.html").read_text(encoding="utf-8")
    figures = len(re.findall(r"<img\s[^>]*src=\"data:image/png", page))
    if not (SHARED_CHECKPOINT.is_file() and SHARED_CIFAR10.is_dir()):
        assert figures == 0 and "To see its five figures, run it" in page
        shared_path(SHARED_CIFAR10)  # skips with the reason (fails in CI, where ../shared is mandatory)
    assert figures == 5, f"{figures} figures on the notebook page"
    assert "To see its five figures" not in page
    accuracy = re.search(r"accuracy on 1000 test images: ([0-9.]+)", page)
    assert accuracy is not None and float(accuracy[1]) >= 0.92


HUB_USER = """
import json, sys
from pathlib import Path

import torch

clone, checkout = sys.argv[1], Path(sys.argv[2]).resolve()
# A torch-only user: this checkout's development install taken away (a .pth path entry, or setuptools' finder).
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != checkout]
sys.meta_path[:] = [finder for finder in sys.meta_path if not type(finder).__module__.startswith("__editable__")]
try:
    import tiniest
    before = tiniest.__file__
except ModuleNotFoundError:
    before = None
try:
    torch.hub.help(clone, "tiniest", trust_repo=True)
    help_error = None
except ValueError as error:
    help_error = type(error).__name__
model = torch.hub.load(clone, "tiniest", source="local", trust_repo=True, weights=None)
import tiniest

print(json.dumps({"before": before, "after": tiniest.__file__, "on_path": clone in sys.path,
                  "layer": type(tiniest.layer(model, (2, 4))).__name__, "help_error": help_error}))
"""


@pytest.mark.slow
def test_a_torch_hub_user_reaches_the_package_as_the_pages_say(tmp_path: Path) -> None:
    """README and docs/index.md: ``import tiniest`` works after ``torch.hub.load`` (the package stays imported),
    though torch.hub takes the repository off ``sys.path`` again; ``torch.hub.help`` refuses a folder."""
    clone = copy_checkout(tmp_path / "clone")
    done = subprocess.run([sys.executable, "-c", HUB_USER, str(clone), str(ROOT)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["before"] is None, "tiniest was importable before the load: the test would prove nothing"
    assert Path(seen["after"]).is_relative_to(clone) and seen["on_path"] is False
    assert seen["layer"] == "AvgPool2d" and seen["help_error"] == "ValueError"
