"""Pictures for ``--plot``: the confusion matrix of ``tiniest evaluate``, the image grid of ``tiniest predict``.

matplotlib is an optional extra (``pip install "tiniest[plot]"``): it is imported here only when a
picture is drawn, onto an Agg canvas of its own, so that no display is needed and the caller's
pyplot backend (a notebook's, say) is left alone. Figures have a fixed size in pixels, and are
written whole or not at all (``tiniest.storage.save_atomically``).

Names in any script: matplotlib's default font has no Chinese, Japanese or Korean glyphs, and would
draw boxes with one warning per missing glyph. An installed font that has them is used as a
fallback (matplotlib takes each glyph from the first font of the list that has it); a character
that no installed font has is written as its code (``\\u732b``), with one ``MissingGlyphsWarning``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tiniest.errors import PreprocessError, TiniestWarning, UsageError, warn
from tiniest.extras import require_extra
from tiniest.names import printable
from tiniest.storage import save_atomically

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tiniest.inference import Prediction
    from tiniest.transforms import Preprocess

__all__ = [
    "MissingGlyphsWarning",
    "confusion_matrix_figure",
    "file_format",
    "predictions_figure",
    "require_matplotlib",
    "save_confusion_matrix",
    "save_predictions",
]

DPI = 100
CONFUSION_INCHES = (8.0, 7.0)  # 800 x 700 pixels
CELL_INCHES = (2.0, 2.4)  # one picture of the grid with its title: 200 x 240 pixels
MAX_COLUMNS = 5
MAX_CLASSES_SHOWN = 3  # more lines would not fit under a 200-pixel picture


class MissingGlyphsWarning(TiniestWarning):
    """Characters of a picture's text that no installed font draws: they are written as their code instead."""


@dataclass(frozen=True)
class _Fonts:
    """The font families that draw a picture's texts, and the code written for each character none draws."""

    families: list[str]
    codes: dict[str, str]

    def shown(self, text: str) -> str:
        return "".join(self.codes.get(char, char) for char in text)


@cache
def _glyphs(path: str) -> frozenset[int]:
    from matplotlib import font_manager

    return frozenset(font_manager.get_font(path).get_charmap())


def _fonts(texts: Iterable[str]) -> _Fonts:
    """The default font, then installed fonts that have the characters it lacks; codes for the rest, said once."""
    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties())
    families = [font_manager.get_font(default).family_name]
    missing = {char for text in texts for char in text if not char.isspace()} - {chr(c) for c in _glyphs(default)}
    for entry in font_manager.fontManager.ttflist:
        if not missing:
            break
        if entry.name.startswith("Last Resort"):  # draws a box for every character: no fallback
            continue
        try:
            found = {char for char in missing if ord(char) in _glyphs(entry.fname)}
        except (OSError, RuntimeError):  # a font file that cannot be read
            continue
        if found and entry.name not in families:
            families.append(entry.name)
            missing -= found
    codes = {char: char.encode("unicode_escape").decode("ascii") for char in sorted(missing)}
    if codes:
        shown = ", ".join(f"{char} ({code})" for char, code in list(codes.items())[:10])
        warn(
            f"no installed font draws {len(codes)} character(s) of the picture's text: {shown}"
            f"{', ...' if len(codes) > 10 else ''}; they are written as their codes. Install a font that has "
            "them (for Chinese, Japanese and Korean, e.g. Noto Sans CJK) to see them drawn",
            MissingGlyphsWarning)
    return _Fonts(families, codes)


def require_matplotlib(purpose: str = "plotting") -> None:
    """Refuse a plot before any long computation when matplotlib is missing; ``purpose`` names what needs it."""
    require_extra("plot", "matplotlib", purpose=purpose)


def file_format(path: str | os.PathLike[str]) -> str:
    """The picture format ``path``'s suffix names (matplotlib's default without one); a UsageError for a suffix
    matplotlib cannot write, so that a command refuses it before its work."""
    require_matplotlib()
    from matplotlib import rcParams
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.removeprefix(".").lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in supported:
        raise UsageError(
            f"{printable(os.fspath(path))}: expected a picture file ending in "
            f"{', '.join('.' + kind for kind in sorted(supported))}; got .{printable(suffix)}"
        )
    return suffix or str(rcParams["savefig.format"])


def _save(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``figure`` to ``path`` whole: an interruption or a full disk leaves any earlier file as it was."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=file_format(path), dpi=DPI)
    save_atomically(Path(path), buffer.getvalue())


def _figure(inches: tuple[float, float]) -> Figure:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=inches, dpi=DPI, layout="constrained")  # room for titles and labels
    FigureCanvasAgg(figure)
    return figure


def confusion_matrix_figure(confusion: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Rows: true class, columns: predicted class; colours are row-normalised, cells show the counts.

    Row normalisation puts each class's recall on the diagonal, so that classes with fewer
    images are not drowned out by the others.
    """
    counts = torch.as_tensor(confusion).to(torch.int64)
    n = len(classes)
    if tuple(counts.shape) != (n, n):
        raise ValueError(f"expected a {n}x{n} confusion matrix for {n} classes, got shape {tuple(counts.shape)}")
    rates = (counts / counts.sum(dim=1, keepdim=True).clamp(min=1)).tolist()
    total, correct = int(counts.sum()), int(counts.trace())
    figure = _figure(CONFUSION_INCHES)
    fonts = _fonts(printable(name) for name in classes)
    # drawn as they are: no mathtext ('$\foo{$' raised), no LaTeX
    shown = [fonts.shown(printable(name)) for name in classes]
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    axes.set_xticks(range(n), labels=shown, rotation=45, ha="right", parse_math=False, usetex=False,
                    fontfamily=fonts.families)
    axes.set_yticks(range(n), labels=shown, parse_math=False, usetex=False, fontfamily=fonts.families)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    accuracy = correct / total if total else 0.0
    axes.set_title(f"accuracy {accuracy:.2%} ({correct}/{total})")
    for i, row in enumerate(counts.tolist()):
        for j, count in enumerate(row):
            color = "white" if rates[i][j] > 0.5 else "black"
            axes.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    return figure


def predictions_figure(images: torch.Tensor, titles: Sequence[str]) -> Figure:
    """``images`` (``(N, 3, H, W)`` floats in [0, 1]) in rows of at most ``MAX_COLUMNS``, each under its title."""
    if len(images) == 0 or len(images) != len(titles):
        raise ValueError(f"expected one title per image and at least one image, got {len(images)} and {len(titles)}")
    columns = min(len(images), MAX_COLUMNS)
    rows = math.ceil(len(images) / columns)
    figure = _figure((columns * CELL_INCHES[0], rows * CELL_INCHES[1]))
    fonts = _fonts(titles)
    for index, (image, title) in enumerate(zip(images, titles, strict=True)):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        axes.set_title(fonts.shown(title), fontsize=8, parse_math=False, usetex=False, fontfamily=fonts.families)
        axes.axis("off")
    return figure


def save_confusion_matrix(path: str | os.PathLike[str], confusion: torch.Tensor, classes: Sequence[str]) -> None:
    """Draw ``confusion_matrix_figure`` to ``path`` (the format follows the suffix, e.g. ``.png``)."""
    _save(confusion_matrix_figure(confusion, classes), path)


def save_predictions(
    path: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    predictions: Sequence[Prediction],
    *,
    transform: Preprocess | None = None,
) -> None:
    """Draw the image files as the model sees them with their file names and top classes.

    ``transform``: the weights' preprocessing (``preprocess_for(model.meta)``; default the published
    contract, 32x32): its size is what is drawn, before its normalization, which a picture cannot show.
    A file that cannot be read (a prediction without classes) gets a blank panel that says so.
    """
    from tiniest.transforms import default_preprocess

    transform = transform or default_preprocess()
    pixels, titles = [], []
    for image, prediction in zip(images, predictions, strict=True):
        try:
            pixels.append(transform.to_unit(image)[0])  # the model's input, in [0, 1]
        except PreprocessError:
            pixels.append(torch.ones(3, *transform.size))
        lines = [f"{printable(name)} {p:.2f}" for name, p in prediction.top[:MAX_CLASSES_SHOWN]] or ["cannot be read"]
        titles.append("\n".join([printable(Path(image).name)[:28], *lines]))
    _save(predictions_figure(torch.stack(pixels), titles), path)
