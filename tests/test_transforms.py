"""Preprocessing: every accepted input gives the model's input; everything else gets a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiniest
from tiniest.release import TiniestWeights
from tiniest.transforms import Preprocess, PreprocessError, decode_image, preprocess, to_uint8_images

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def reference(pixels: np.ndarray) -> torch.Tensor:
    """The model card's convention written out by hand: RGB / 255 - 0.5, NCHW."""
    return torch.from_numpy(pixels.astype(np.float32) / 255 - 0.5).permute(2, 0, 1).unsqueeze(0)


def test_policy_comes_from_the_release_metadata() -> None:
    module = TiniestWeights.DEFAULT.transforms()
    assert isinstance(module, Preprocess)
    assert module.size == (32, 32) and module.shift == -0.5
    meta = dict(TiniestWeights.DEFAULT.meta["preprocessing"])
    with pytest.raises(ValueError, match=r"'color'.*'RGB'.*'BGR'"):
        Preprocess.from_meta({**meta, "color": "BGR"})
    with pytest.raises(ValueError, match="bilinear with antialiasing, got 'nearest'"):
        Preprocess.from_meta({**meta, "resize": "nearest"})
    assert Preprocess.from_meta({**meta, "size": [48, 40], "shift": 0.0}).size == (48, 40)
    assert tiniest.preprocess is preprocess and tiniest.Preprocess is Preprocess


def test_every_input_kind_gives_the_same_tensor(pixels: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    expected = reference(pixels)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    inputs = {
        "str path": str(path),
        "Path": path,
        "PIL": Image.fromarray(pixels),
        "numpy uint8": pixels,
        "numpy float": pixels.astype(np.float64) / 255,
        "tensor uint8": tensor,
        "tensor float": tensor.float() / 255,
        "tensor half": (tensor.float() / 255).half(),
    }
    for name, value in inputs.items():
        out = preprocess(value)
        assert out.shape == (1, 3, 32, 32) and out.dtype == torch.float32, name
        atol = 1e-3 if name == "tensor half" else 1e-6
        assert torch.allclose(out, expected, atol=atol), name
    assert torch.equal(preprocess(pixels), expected)


def test_batches_and_lists_are_concatenated(pixels: np.ndarray) -> None:
    batch = np.stack([pixels, 255 - pixels])
    from_numpy = preprocess(batch)
    from_tensor = preprocess(torch.from_numpy(batch).permute(0, 3, 1, 2))
    from_list = preprocess([Image.fromarray(pixels), torch.from_numpy(255 - pixels).permute(2, 0, 1)])
    assert from_numpy.shape == (2, 3, 32, 32)
    assert torch.equal(from_numpy, from_tensor) and torch.equal(from_numpy, from_list)
    assert torch.equal(from_numpy[1], reference(255 - pixels)[0])


def test_gray_palette_and_transparent_images_are_converted(pixels: np.ndarray) -> None:
    gray = Image.fromarray(pixels[..., 0])
    out = preprocess(gray)
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    assert torch.allclose(out[0, 0], torch.from_numpy(pixels[..., 0]).float() / 255 - 0.5)

    rgba = np.dstack([pixels, np.full((32, 32), 255, np.uint8)])
    assert torch.equal(preprocess(Image.fromarray(rgba)), reference(pixels)), "opaque alpha changes nothing"
    rgba[:16, :, 3] = 0
    see_through = preprocess(Image.fromarray(rgba))
    assert bool((see_through[0, :, :16] == 0.5).all()), "transparent pixels become white"
    assert torch.equal(see_through[0, :, 16:], reference(pixels)[0, :, 16:])
    assert torch.allclose(preprocess(torch.from_numpy(rgba).permute(2, 0, 1)), see_through, atol=1e-6)

    palette = Image.fromarray(pixels).convert("P")
    assert torch.equal(preprocess(palette), reference(np.asarray(palette.convert("RGB"))))
    palette.info["transparency"] = 0
    assert bool((preprocess(palette) == 0.5).all(dim=1).any()), "the transparent palette entry becomes white"


def test_other_sizes_are_resized_like_pils_antialiased_bilinear() -> None:
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, size=(12, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 96x80
    image = Image.fromarray(smooth)
    out = preprocess(image)
    assert out.shape == (1, 3, 32, 32)
    pil = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR)).astype(np.float32) / 255 - 0.5
    assert torch.allclose(out, torch.from_numpy(pil).permute(2, 0, 1).unsqueeze(0), atol=1.5 / 255)
    flat = preprocess(np.full((7, 300, 3), 200, np.uint8))
    assert torch.allclose(flat, torch.full((1, 3, 32, 32), 200 / 255 - 0.5), atol=1e-6)
    assert to_uint8_images(image).shape == (1, 3, 32, 32)


def test_decode_image_keeps_exact_uint8(pixels: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert torch.equal(decode_image(tmp_path / "a.png"), torch.from_numpy(pixels).permute(2, 0, 1))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((32, 32, 2), np.uint8), r"expected 1 \(gray\), 3 \(RGB\) or 4 \(RGBA\) channels .*got 2"),
        (np.zeros((3, 32, 32), np.uint8), r"channels .*\(N, H, W, C\), got 32"),
        (np.full((32, 32, 3), 1.5), r"expected floating point values in \[0, 1\].*got values in \[1.5, 1.5\]"),
        (np.full((32, 32, 3), np.nan), "got NaN or inf"),
        (torch.full((3, 32, 32), float("inf")), "got NaN or inf"),
        (torch.zeros(0, 3, 32, 32), "expected at least one image, got an empty batch"),
        ([], "expected at least one image, got an empty list"),
        (torch.zeros(3, 32, 32, dtype=torch.int32), "expected uint8 or floating point values, got dtype torch.int32"),
        (np.zeros((32, 32, 3), np.int64), "expected a uint8 or floating point numpy array, got dtype int64"),
        (torch.zeros(32, 32), r"expected a tensor of shape \(C, H, W\) or \(N, C, H, W\)"),
        (torch.zeros(3, 0, 32, dtype=torch.uint8), "expected a non-empty image"),
        (np.zeros(10, np.uint8), r"expected a numpy array of shape \(H, W, C\)"),
        (
            {"image": 1},
            "expected an image path, a PIL image, a numpy array, a tensor or a list of them, got builtins.dict",
        ),
        (Image.new("I;16", (32, 32)), "expected an 8-bit image .* got PIL mode 'I;16'"),
    ],
)
def test_bad_inputs_say_what_was_expected_and_what_came(value: object, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        preprocess(value)


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    fake = tmp_path / "photo.png"
    fake.write_text("this is not an image")
    with pytest.raises(PreprocessError, match=r"cannot read image file '.*photo\.png': expected a readable image"):
        preprocess(fake)
    with pytest.raises(PreprocessError, match=r"cannot read image file '.*missing\.jpg'"):
        preprocess(str(tmp_path / "missing.jpg"))
    with pytest.raises(PreprocessError, match="cannot read image file"):
        preprocess(tmp_path)


def test_importing_tiniest_stays_light() -> None:
    heavy = "{'PIL', 'huggingface_hub', 'tiniest.transforms', 'tiniest.data', 'tiniest.predict', 'tiniest.evaluate'}"
    code = f"import sys, tiniest; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
