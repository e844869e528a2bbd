"""``--plot`` of ``evaluate`` and ``predict``: PNGs of a known size; a clear refusal without matplotlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiniest
from tests.test_evaluation import tiny_folder
from tiniest import plots
from tiniest.commands import main
from tiniest.weights import CLASSES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def random_weights(tmp_path: Path) -> Path:
    """A state_dict of an untrained model: the pictures need predictions, not good ones."""
    torch.manual_seed(0)
    path = tmp_path / "random.pt"
    torch.save(tiniest.tiniest(weights=None).state_dict(), path)
    return path


def open_png(path: Path) -> Image.Image:
    """``path`` as a fully decoded PNG (a truncated or foreign file raises)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image


def test_evaluate_plot_draws_the_confusion_matrix(tmp_path: Path, random_weights: Path) -> None:
    tiny_folder(tmp_path / "data", ("cat", "dog", "ship"))
    out = tmp_path / "confusion.png"
    args = ["evaluate", "--data", str(tmp_path / "data"), "--no-progress", "--eager", "--weights", str(random_weights)]
    with pytest.warns(tiniest.UnverifiedWeightsWarning):
        assert main([*args, "--plot", str(out)]) == 0
    image = open_png(out)
    assert image.size == (800, 700)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # drawn, not blank


def test_confusion_colours_are_row_normalised() -> None:
    from matplotlib import colormaps

    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion[0, 0] = 1000  # a large class, all right
    confusion[1, 1], confusion[1, 2] = 5, 5  # a small class, half right: mid colour, not near-white
    figure = plots.confusion_matrix_figure(confusion, CLASSES)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)
    axes = figure.axes[0]
    blues = colormaps["Blues"]

    def colour(row: int, column: int) -> np.ndarray:
        x, y = axes.transData.transform((column + 0.35, row + 0.35))  # off the cell's centre, where its count is
        return pixels[pixels.shape[0] - round(y), round(x)]

    for (row, column), rate in {(0, 0): 1.0, (1, 1): 0.5, (1, 2): 0.5, (0, 1): 0.0, (5, 5): 0.0}.items():
        expected = np.array(blues(rate)[:3]) * 255
        assert np.abs(colour(row, column) - expected).max() <= 3, (row, column)
    texts = {text.get_text() for text in axes.texts}
    assert {"1000", "5", "0"} <= texts and len(axes.texts) == 100
    assert [label.get_text() for label in axes.get_xticklabels()] == list(CLASSES)
    assert [label.get_text() for label in axes.get_yticklabels()] == list(CLASSES)
    with pytest.raises(ValueError, match="10x10"):
        plots.confusion_matrix_figure(confusion[:3], CLASSES)


def test_predict_plot_draws_the_images_with_their_classes(
    tmp_path: Path, random_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 0, 0)]
    paths = []
    for i, rgb in enumerate(colours):  # 7 pictures: a grid of 5 columns and 2 rows
        paths.append(tmp_path / f"picture-{i}.png")
        Image.new("RGB", (64, 48), rgb).save(paths[-1])
    out = tmp_path / "grid.png"
    args = ["predict", *map(str, paths), "--top-k", "3", "--eager", "--weights", str(random_weights)]
    with pytest.warns(tiniest.UnverifiedWeightsWarning):
        assert main([*args, "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    image = open_png(out)
    assert image.size == (5 * 200, 2 * 240)
    pixels = np.asarray(image.convert("RGB"))
    for rgb in colours:  # every picture is drawn, large
        assert (pixels == rgb).all(axis=-1).sum() > 80 * 80, rgb
    assert all(path.name in printed for path in paths)


def test_predictions_grid_marks_a_file_that_cannot_be_read(tmp_path: Path, random_weights: Path) -> None:
    good, broken = tmp_path / "good.png", tmp_path / "broken.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(good)
    broken.write_bytes(b"not a picture")
    out = tmp_path / "grid.png"
    args = ["predict", str(good), str(broken), "--eager", "--weights", str(random_weights), "--plot", str(out)]
    with pytest.warns(tiniest.UnverifiedWeightsWarning):
        assert main(args) == 1  # the bad file is reported; the picture is drawn all the same
    pixels = np.asarray(open_png(out).convert("RGB"))
    assert pixels.shape == (240, 400, 3)
    assert (pixels[:, :200] == (255, 0, 0)).all(axis=-1).sum() > 80 * 80  # the readable picture, left
    assert not (pixels[:, 200:] == (255, 0, 0)).all(axis=-1).any()  # a blank panel, right


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_plot_without_matplotlib_names_the_extra(tmp_path: Path, command: str) -> None:
    out = tmp_path / "plot.png"
    picture = tmp_path / "picture.png"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(picture)
    argv = ["evaluate", "--data", str(tmp_path)] if command == "evaluate" else ["predict", str(picture)]
    prelude = (
        "import sys; sys.modules['matplotlib'] = None; from tiniest.commands import main; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", prelude, *argv, "--plot", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        f'tiniest {command}: error: --plot needs the plot extra: pip install "tiniest[plot]" '
        "(import of matplotlib halted; None in sys.modules)"
    ]
    assert not out.exists()


def test_names_are_drawn_literally(tmp_path: Path, random_weights: Path) -> None:
    """'$' opens mathtext in matplotlib: '$\\foo{$' in a file or class name crashed --plot after the work was done."""
    hostile = "$\\foo{$"
    picture = tmp_path / f"{hostile}.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(picture)
    out = tmp_path / "grid.png"
    args = ["predict", str(picture), "--eager", "--weights", str(random_weights), "--plot", str(out)]
    with pytest.warns(tiniest.UnverifiedWeightsWarning):
        assert main(args) == 0
    open_png(out)

    classes = [hostile, "a\nforged", "$x^2$"]
    figure = plots.confusion_matrix_figure(torch.eye(3, dtype=torch.int64), classes)
    figure.savefig(tmp_path / "confusion.png")
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == [hostile, "a\\nforged", "$x^2$"]
    assert not any(label.get_parse_math() for label in axes.get_yticklabels())
    grid = plots.predictions_figure(torch.zeros(1, 3, 32, 32), [hostile])
    grid.savefig(tmp_path / "one.png")
    assert grid.axes[0].title.get_text() == hostile


def _cjk_font_installed() -> bool:
    from matplotlib import font_manager

    return any(
        0x732B in font_manager.get_font(entry.fname).get_charmap()
        for entry in font_manager.fontManager.ttflist
        if not entry.name.startswith("Last Resort")
    )


def test_names_in_any_script_are_drawn_or_said_once(tmp_path: Path) -> None:
    """A glyph the default font lacks comes from an installed font that has it; if none has it, its code is drawn
    and one MissingGlyphsWarning says so, instead of boxes and one matplotlib warning per glyph."""
    import warnings

    def drawn(classes: list[str]) -> tuple[list[str], list[str], list[warnings.WarningMessage]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            figure = plots.confusion_matrix_figure(torch.eye(len(classes), dtype=torch.int64), classes)
            figure.savefig(tmp_path / "confusion.png")
        labels = figure.axes[0].get_xticklabels()
        return [label.get_text() for label in labels], labels[0].get_fontfamily(), caught

    # '⌶' (APL I-beam) is not in DejaVu Sans, matplotlib's default, but in fonts matplotlib ships
    texts, families, caught = drawn(["⌶", "b"])
    assert texts == ["⌶", "b"] and len(families) == 2 and caught == []
    texts, families, caught = drawn(["猫", "犬", "ネコ"])
    if _cjk_font_installed():
        assert texts == ["猫", "犬", "ネコ"] and caught == []
    else:
        assert texts == ["\\u732b", "\\u72ac", "\\u30cd\\u30b3"]
        assert [w.category for w in caught] == [plots.MissingGlyphsWarning], [str(w.message) for w in caught]
        assert "猫 (\\u732b)" in str(caught[0].message) and "Noto Sans CJK" in str(caught[0].message)
    grid_caught = []
    with pytest.warns(plots.MissingGlyphsWarning) if not _cjk_font_installed() else warnings.catch_warnings():
        grid = plots.predictions_figure(torch.zeros(2, 3, 32, 32), ["猫.png\n猫 0.90", "x.png\nb 0.10"])
        grid.savefig(tmp_path / "grid.png")
        grid_caught.append(grid.axes[0].title.get_text())
    assert grid_caught[0] in ("猫.png\n猫 0.90", "\\u732b.png\n\\u732b 0.90")
