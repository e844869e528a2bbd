"""MkDocs hook: the quick-start notebook's page shows its figures wherever the reference data is at hand.

The notebook is committed without outputs (they would hold CIFAR-10 pictures, and go stale). Where
``../shared`` holds the weights and CIFAR-10 (a developer's checkout, CI), the build runs it offline
with mkdocs-jupyter, on the first 110 test pictures of each class, so the page shows its figures;
mkdocs-jupyter keeps the result in its cache until the notebook changes. Elsewhere the page shows the
notebook unexecuted, under a note saying how to see them. ``TINIEST_DOCS_EXECUTE=0`` renders it
unexecuted even where the data is; ``TINIEST_REQUIRE_SHARED=1`` (CI) makes missing data an error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

NOTEBOOK = "quickstart.ipynb"
PER_CLASS = 110  # the notebook measures 100 pictures per class and shows 2 more
UNEXECUTED_NOTE = (
    '<div class="admonition note"><p class="admonition-title">Figures</p>'
    "<p>This copy of the site was built without CIFAR-10 at hand, so the notebook is shown without its "
    "outputs. To see its five figures, run it: open <code>examples/quickstart.ipynb</code> in Jupyter, "
    "or run <code>jupyter nbconvert --to html --execute examples/quickstart.ipynb</code> (the "
    "variables it reads are in its introduction).</p></div>"
)

_state: dict[str, Any] = {"executed": False, "folder": None, "environ": None}


def _shared(config: Any) -> tuple[Path, Path] | None:
    """The weights file and CIFAR-10 folder of ``../shared`` beside the checkout, or None where either is absent."""
    shared = Path(config.config_file_path).resolve().parent.parent / "shared"
    weights, cifar10 = shared / "weights" / "tiniest.pt", shared / "cifar10" / "test"
    return (weights, cifar10) if weights.is_file() and cifar10.is_dir() else None


def _subset(source: Path, target: Path) -> Path:
    """The first PER_CLASS test pictures of each class as an image folder (``target/test/<class>/*.png``)."""
    for folder in sorted(path for path in source.iterdir() if path.is_dir()):
        (target / "test" / folder.name).mkdir(parents=True)
        for picture in sorted(folder.glob("*.png"))[:PER_CLASS]:
            shutil.copyfile(picture, target / "test" / folder.name / picture.name)
    return target


def on_config(config: Any) -> Any:
    found = _shared(config)
    wanted = os.environ.get("TINIEST_DOCS_EXECUTE", "1") != "0"
    if found is None and os.environ.get("TINIEST_REQUIRE_SHARED") == "1":
        raise PluginError("the notebook's figures need ../shared (weights/tiniest.pt, cifar10/test); "
                          "TINIEST_REQUIRE_SHARED=1 makes it mandatory")
    _state["executed"] = execute = found is not None and wanted
    config.plugins["mkdocs-jupyter"].config["execute"] = execute
    if execute:
        assert found is not None
        weights, cifar10 = found
        folder = Path(tempfile.mkdtemp(prefix="tiniest-docs-"))
        _state["folder"], _state["environ"] = folder, dict(os.environ)
        os.environ.update({  # read by the kernel the notebook runs in, a child of this process
            "TINIEST_WEIGHTS": str(weights),
            "TINIEST_DATA": str(_subset(cifar10, folder / "cifar10")),
            "TINIEST_CACHE": str(folder / "cache"),  # decoded pictures: not into the user's cache
            "TINIEST_OFFLINE": "1",
            "HF_HUB_OFFLINE": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures as outputs
        })
    return config


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri == NOTEBOOK and not _state["executed"]:
        return UNEXECUTED_NOTE + html
    return html


def on_post_build(config: Any) -> None:
    if _state["folder"] is not None:
        shutil.rmtree(_state["folder"], ignore_errors=True)
        os.environ.clear()
        os.environ.update(_state["environ"])
        _state["folder"] = _state["environ"] = None
