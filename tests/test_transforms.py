"""Preprocessing: every accepted input gives the model's input; everything else gets a clear error."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiniest
from tiniest.errors import PreprocessError, UsageError
from tiniest.transforms import PREPROCESSING, Preprocess, decode_image, preprocess
from tiniest.weights import TiniestWeights

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def as_uint8(x: object) -> torch.Tensor:
    """Any input as ``(N, 3, 32, 32)`` uint8 RGB, rounded as :func:`decode_image` rounds."""
    return Preprocess().to_unit(x).mul_(255).round_().clamp_(0, 255).to(torch.uint8)  # type: ignore[arg-type]


def reference(pixels: np.ndarray) -> torch.Tensor:
    """The model card's convention written out by hand: RGB / 255 - 0.5, NCHW."""
    return torch.from_numpy(pixels.astype(np.float32) / 255 - 0.5).permute(2, 0, 1).unsqueeze(0)


def test_policy_comes_from_the_release_metadata() -> None:
    module = TiniestWeights.DEFAULT.transforms()
    assert isinstance(module, Preprocess)
    assert module.size == (32, 32) and module.mean == (0.5, 0.5, 0.5) and module.std == (1.0, 1.0, 1.0)
    assert (module.interpolation, module.antialias) == ("bilinear", True)
    meta = dict(TiniestWeights.DEFAULT.meta["preprocessing"])  # the record states numbers
    assert meta == PREPROCESSING
    with pytest.raises(ValueError, match=r"'color'.*'RGB'.*'BGR'"):
        Preprocess.from_meta({**meta, "color": "BGR"})
    with pytest.raises(ValueError, match=r"'interpolation': expected 'bilinear' or 'bicubic', got 'nearest'"):
        Preprocess.from_meta({**meta, "interpolation": "nearest"})
    assert Preprocess.from_meta({**meta, "size": [48, 40]}).size == (48, 40)
    assert Preprocess.from_meta({**meta, "mean": [0.25] * 3}).mean == (0.25, 0.25, 0.25)
    with pytest.raises(PreprocessError, match=r"^preprocessing: expected the keys size, interp.*, got \['antialias'"):
        Preprocess.from_meta({**meta, "shift": -0.5})  # the prose of unreleased versions is no contract
    assert Preprocess.from_meta(PREPROCESSING).contract == PREPROCESSING == Preprocess.from_meta(meta).contract
    assert tiniest.preprocess is preprocess and tiniest.Preprocess is Preprocess


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": [0, 32]}, r" 'size': expected \[height, width\], two whole numbers from 1 to 1024, got \[0, 32\]$"),
        ({"size": None}, r" 'size': expected \[height, width\].*got None$"),
        ({"interpolation": "nearest"}, r" 'interpolation': expected 'bilinear' or 'bicubic', got 'nearest'$"),
        ({"antialias": 1}, r" 'antialias': expected true or false, got 1$"),
        ({"mean": [0.5, 0.5]}, r" 'mean': expected three numbers from -1 to 1, one per RGB channel, got \[0.5, 0.5\]$"),
        ({"mean": [0.5, "x", 0.5]}, r" 'mean': expected three numbers .*got \[0.5, 'x', 0.5\]$"),
        ({"mean": [float("nan")] * 3}, r" 'mean': expected three numbers .*got \[nan, nan, nan\]$"),
        ({"std": [0.0, 1.0, 1.0]}, r" 'std': expected three numbers from 0.01 to 100, one per RGB channel, got"),
        ({"std": [True, 1.0, 1.0]}, r" 'std': expected three numbers .*got \[True, 1.0, 1.0\]$"),
        ({"color": "BGR"}, r" 'color': this version implements 'RGB', the weights ask 'BGR'$"),
        ({"crop": 0.875}, r": expected the keys size, interpolation, antialias, mean, std, color, got \["),
    ],
)
def test_a_numeric_policy_is_checked_key_by_key(change: dict[str, object], message: str) -> None:
    """Each number of the contract says what it may be and what came, in one line."""
    with pytest.raises(PreprocessError, match=r"^preprocessing" + message) as caught:
        Preprocess.from_meta({**PREPROCESSING, **change})
    assert "\n" not in str(caught.value)
    missing = {key: value for key, value in PREPROCESSING.items() if key != "std"}
    with pytest.raises(PreprocessError, match=r"^preprocessing: expected the keys .*got \['antialias', 'color'"):
        Preprocess.from_meta(missing)


def test_the_numbers_decide_the_resize_and_the_normalization(pixels: np.ndarray) -> None:
    """Size, interpolation, antialias, mean and std each reach the tensor: (resize(x / 255) - mean) / std."""
    import torch.nn.functional as F

    unit = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.5)
    for mode, antialias in (("bilinear", True), ("bilinear", False), ("bicubic", True), ("bicubic", False)):
        policy = {**PREPROCESSING, "size": [20, 12], "interpolation": mode, "antialias": antialias,
                  "mean": list(mean), "std": list(std)}
        module = Preprocess.from_meta(policy)
        assert module.contract == policy
        resized = F.interpolate(unit, size=(20, 12), mode=mode, antialias=antialias, align_corners=False).clamp(0, 1)
        expected = (resized - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(module(pixels), expected, rtol=0, atol=1e-6)
        picture = Image.fromarray(pixels)  # a picture takes the stripe path: separable, the same numbers
        torch.testing.assert_close(module(picture), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": ["a", "b"]}, r"'size': expected \[height, width\], two whole numbers from 1 to 1024, got \['a', 'b'"),
        ({"size": "ab"}, r"'size': expected \[height, width\].*got 'ab'"),
        ({"size": [0, 0]}, r"'size': .*from 1 to 1024, got \[0, 0\]"),
        ({"size": [-1, 32]}, r"'size': .*got \[-1, 32\]"),
        ({"size": [32.5, 32]}, r"'size': .*got \[32.5, 32\]"),
        ({"size": [True, 32]}, r"'size': .*got \[True, 32\]"),
        ({"size": [10**9, 32]}, r"'size': .*got \[1000000000, 32\]"),
        ({"mean": [float("nan")] * 3}, r"'mean': expected three numbers from -1 to 1.*got \[nan, nan, nan\]"),
        ({"mean": [float("inf")] * 3}, r"'mean': expected three numbers.*got \[inf, inf, inf\]"),
        ({"std": [10**400] * 3}, r"'std': expected three numbers from 0.01 to 100.*got"),
        ({"antialias": None}, r"'antialias': expected true or false, got None"),
    ],
)
def test_a_policy_from_a_weights_file_is_checked_before_use(change: dict[str, object], message: str) -> None:
    """Non-numbers raised bare ValueErrors (a traceback in the CLI); [0, 0] meant 'keep the input's size'."""
    meta = {**TiniestWeights.DEFAULT.meta["preprocessing"], **change}
    with pytest.raises(PreprocessError, match=r"^preprocessing " + message) as caught:
        Preprocess.from_meta(meta)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


@pytest.mark.parametrize("policy", [["size", [32, 32]], "RGB", 3])
def test_a_policy_that_is_not_a_mapping_is_refused_in_one_line(policy: object) -> None:
    says = rf"^preprocessing: expected a JSON object \(a mapping\), got {type(policy).__name__}$"
    with pytest.raises(PreprocessError, match=says):
        Preprocess.from_meta(policy)  # type: ignore[arg-type]


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
    assert as_uint8(image).shape == (1, 3, 32, 32)


def test_decode_image_keeps_exact_uint8(pixels: np.ndarray, tmp_path: Path) -> None:
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert torch.equal(decode_image(tmp_path / "a.png"), torch.from_numpy(pixels).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)])
@pytest.mark.parametrize("orientation", [1, 6])
def test_decode_image_is_the_preprocessed_picture_rounded(
    mode: str, size: tuple[int, int], orientation: int, tmp_path: Path
) -> None:
    """A picture already at the size skips the float round trip: the same bytes, every value 0-255 included."""
    from tiniest.transforms import _DEFAULT, _quantize, _read_file

    values = np.arange(size[0] * size[1] * 4) % 256
    rgba = np.random.default_rng(1).permutation(values).astype(np.uint8).reshape(size[1], size[0], 4)
    image = Image.fromarray(rgba, "RGBA")
    image = image.convert(mode) if mode != "I;16" else Image.fromarray(rgba[..., 0].astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(tmp_path / "a.png", exif=exif)
    expected = _quantize(_read_file(tmp_path / "a.png", _DEFAULT.resizing))[0]
    got = decode_image(tmp_path / "a.png")
    assert got.dtype == torch.uint8 and got.is_contiguous() and torch.equal(got, expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((32, 32, 2), np.uint8), r"expected 1 \(gray\), 3 \(RGB\) or 4 \(RGBA\) channels .*got 2"),
        (np.zeros((3, 32, 32), np.uint8), r"channels in layout \(H, W, C\), got 32 \(shape \(3, 32, 32\)\)"),
        (np.zeros((2, 3, 8, 9), np.uint8), r"layout \(N, H, W, C\), got 9 \(shape \(2, 3, 8, 9\)\)"),
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
            "expected an image path, bytes, a binary file, a PIL image, a numpy array, a tensor or a list of them, "
            "got builtins.dict",
        ),
        (Image.new("F", (32, 32)), "expected an 8- or 16-bit image .* got PIL mode 'F'"),
        (Image.new("I", (32, 32)), "expected an 8- or 16-bit image .* got PIL mode 'I'"),
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
    heavy = {"PIL", "huggingface_hub", "tiniest.transforms", "tiniest.data", "tiniest.inference", "tiniest.evaluation"}
    code = f"import sys, tiniest; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_channels_first_array_is_reported_with_the_users_shape() -> None:
    with pytest.raises(PreprocessError) as caught:
        preprocess(np.zeros((3, 300, 451), np.uint8))
    message = str(caught.value)
    assert "(shape (3, 300, 451))" in message and "(1, 451, 3, 300)" not in message
    assert "channels first" in message and "x.transpose(1, 2, 0)" in message
    with pytest.raises(PreprocessError, match=r"shape \(300, 451, 3\)\).*channels last.*x\.permute\(2, 0, 1\)"):
        preprocess(torch.zeros(300, 451, 3, dtype=torch.uint8))


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): ``pixels`` (H, W, C) uint16, C = 1 or 3."""
    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [3, 1])
def test_16_bit_pngs_keep_the_high_byte_as_the_readme_says(tmp_path: Path, channels: int) -> None:
    wide = np.random.default_rng(2).integers(0, 65536, size=(32, 32, channels), dtype=np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(png16(wide))
    high = torch.from_numpy((wide >> 8).astype(np.uint8)).permute(2, 0, 1).expand(3, -1, -1)
    assert torch.equal(decode_image(path), high)
    assert torch.equal(preprocess(path)[0], high.float() / 255 - 0.5)
    assert torch.equal(preprocess(Image.open(path))[0], high.float() / 255 - 0.5)
    page = (ROOT / "docs" / "classify.md").read_text(encoding="utf-8")  # the input policy's page
    assert "16-bit images keep the high byte" in page and "16-bit and float modes are refused" not in page


def upright_picture() -> Image.Image:
    """A 96x64 picture whose orientation matters: four flat quadrants of different colours."""
    pixels = np.zeros((64, 96, 3), np.uint8)
    pixels[:32, :48], pixels[:32, 48:], pixels[32:, :48], pixels[32:, 48:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), 128
    return Image.fromarray(pixels)


# The transposition that stores an upright picture under each EXIF orientation (the inverse of what reading undoes).
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied_before_anything_else(tmp_path: Path, orientation: int) -> None:
    upright = upright_picture()
    upright.save(tmp_path / "upright.jpg", quality=95)
    expected = preprocess(tmp_path / "upright.jpg")
    stored = upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    stored.save(tmp_path / "untagged.jpg", quality=95)
    tolerance = 6 / 255  # JPEG's blocks differ a little once the picture is rotated
    for name, value in {"path": tmp_path / "phone.jpg", "PIL": Image.open(tmp_path / "phone.jpg")}.items():
        got = preprocess(value)
        assert (got - expected).abs().max() <= tolerance, name
    assert torch.equal(decode_image(tmp_path / "phone.jpg"), as_uint8(tmp_path / "phone.jpg")[0])
    sideways = preprocess(tmp_path / "untagged.jpg")
    assert (sideways - expected).abs().max() > 0.5, "without the tag the picture is not upright: the test can fail"


def big_photo(path: Path, width: int = 4000, height: int = 3000) -> None:
    """A photo-sized JPEG with smooth content (a random 40x30 picture scaled up)."""
    small = np.random.default_rng(5).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)


def test_large_jpegs_are_decoded_at_reduced_scale_with_the_same_result(tmp_path: Path) -> None:
    big_photo(tmp_path / "photo.jpg", 1600, 1200)
    full = Image.open(tmp_path / "photo.jpg").convert("RGB")  # decoded at full size, by the user
    reduced = preprocess(tmp_path / "photo.jpg")
    assert (reduced - preprocess(full)).abs().max() <= 3 / 255, "the reduced-scale decode changes little"


@pytest.mark.slow
def test_memory_stays_flat_over_many_large_photos(tmp_path: Path) -> None:
    """Peak RSS of a fresh process classifying 12-megapixel JPEGs, after a warm-up on a small one.

    A full-size decode costs 36 MB (uint8) plus 144 MB (float) per photo; decoded at 1/8 scale, a few MB.
    """
    small = tmp_path / "small.jpg"
    big_photo(small, 400, 300)
    big_photo(tmp_path / "0.jpg")
    photos = [tmp_path / f"{i}.jpg" for i in range(6)]
    for photo in photos[1:]:
        photo.write_bytes(photos[0].read_bytes())
    script = f"""
import resource, sys, tiniest
model = tiniest.Tiniest().eval()
paths = {[str(p) for p in photos]!r}
tiniest.predict({str(small)!r}, model=model)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert len(tiniest.predict(paths, model=model)) == 6
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown_mb = int(done.stdout.strip())
    assert grown_mb < 60, f"peak memory grew by {grown_mb} MB over 6 photos of 12 megapixels"


def test_without_pillow_the_message_names_the_extra() -> None:
    script = """
import sys
sys.modules["PIL"] = None
import tiniest
from tiniest.errors import MissingExtraError
try:
    tiniest.preprocess("photo.jpg")
except ImportError as error:
    assert isinstance(error, MissingExtraError) and isinstance(error, RuntimeError)
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'pip install "tiniest[images]"' in done.stdout


def test_decoding_images_needs_no_numpy(pixels: np.ndarray, tmp_path: Path) -> None:
    """Pillow does not bring numpy, and the images extra is not the only way to have Pillow."""
    Image.fromarray(pixels).save(tmp_path / "a.png")
    script = f"""
import sys, warnings
sys.modules["numpy"] = None
warnings.simplefilter("ignore")  # torch's own "Failed to initialize NumPy"
import json, tiniest
print(json.dumps(tiniest.preprocess({str(tmp_path / "a.png")!r}).add(0.5).mul(255).round().int().tolist()))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [torch.from_numpy(pixels).permute(2, 0, 1).tolist()]


# --------------------------------------------------------------------------- hostile and unusual files


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def broken_png() -> bytes:
    """72 bytes: a 4x4 PNG whose pixel data stops after 10 bytes, followed by a chunk with a garbage name.

    Pillow identifies it, then its decoder raises ``SyntaxError: broken PNG file`` while loading.
    """
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
    data = png_chunk(b"IDAT", zlib.compress(bytes(range(52)))[:10])
    return b"\x89PNG\r\n\x1a\n" + header + data + b"\0\0\0\x05\x01\x02\x03\x04" + b"\0" * 9


def test_a_broken_png_is_a_preprocess_error_naming_the_file_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(broken_png())
    # The file is what the test says: Pillow's decoder raises SyntaxError.
    with Image.open(path) as image, pytest.raises(SyntaxError, match="broken PNG file"):
        image.load()
    expected = r"cannot read image file '.*broken\.png': expected a readable image \(SyntaxError: broken PNG file"
    with pytest.raises(PreprocessError, match=expected):
        preprocess(path)
    with pytest.raises(PreprocessError, match=expected):
        decode_image(path)
    with pytest.raises(PreprocessError, match=r"PIL image: expected a readable image \(SyntaxError"):
        preprocess(Image.open(path))  # opened lazily by the caller: decoded here
    model = tiniest.Tiniest().eval()
    with pytest.raises(PreprocessError, match=expected):
        tiniest.predict(path, model=model)
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(good)
    report = tiniest.predict([path, good], model=model, errors="report")
    assert report[0].error is not None and "broken.png" in report[0].error and report[1].error is None


MODE_COLORS: dict[str, object] = {
    "1": 1,
    "L": 77,
    "P": 5,
    "RGB": (10, 20, 30),
    "RGBX": (10, 20, 30, 0),
    "CMYK": (0, 50, 100, 0),
    "YCbCr": (128, 100, 150),
    "LAB": (200, 128, 128),
    "HSV": (0, 0, 200),
    "LA": (77, 0),
    "PA": (5, 255),
    "RGBA": (10, 20, 30, 128),
    "La": (100, 128),
    "RGBa": (10, 20, 30, 128),
    "I;16": 0x1234,
    "I;16B": 0xABCD,
    "I;16L": 0x00FF,
    "I;16N": 0xFF00,
}


def expected_rgb(mode: str, color: object) -> tuple[int, int, int]:
    """The documented conversion of one pixel, written out per kind of mode."""
    if mode.startswith("I;16"):
        high = int(color) >> 8  # type: ignore[call-overload]
        return (high, high, high)
    if mode in ("La", "RGBa"):  # premultiplied: colour + (255 - alpha)
        *channels, alpha = color  # type: ignore[misc]
        values = [min(255, c + 255 - alpha) for c in channels]
        return (values[0],) * 3 if len(values) == 1 else (values[0], values[1], values[2])
    if mode in ("LA", "PA", "RGBA"):  # straight alpha, onto white
        rgba = Image.new(mode, (1, 1), color).convert("RGBA").getpixel((0, 0))
        r, g, b, a = rgba  # type: ignore[misc]
        return tuple(round((c * a + 255 * (255 - a)) / 255) for c in (r, g, b))  # type: ignore[return-value]
    return Image.new(mode, (1, 1), color).convert("RGB").getpixel((0, 0))  # type: ignore[return-value]


@pytest.mark.parametrize("mode", sorted(MODE_COLORS))
def test_every_pil_mode_becomes_rgb_by_its_documented_conversion(mode: str) -> None:
    image = Image.new(mode, (40, 24), MODE_COLORS[mode])  # not 32x32: the resize is exercised too
    out = as_uint8(image)
    assert out.shape == (1, 3, 32, 32)
    got = tuple(int(v) for v in out[0, :, 0, 0])
    assert all(abs(g - e) <= 1 for g, e in zip(got, expected_rgb(mode, MODE_COLORS[mode]), strict=True)), got
    assert bool((out == out[:, :, :1, :1]).all()), "a flat picture stays flat"


def test_premultiplied_la_is_composited_onto_white_not_a_bare_value_error() -> None:
    with pytest.raises(ValueError):  # what Pillow does with it: the reason this mode is handled by hand
        Image.new("La", (2, 2), (100, 128)).convert("RGB")
    assert as_uint8(Image.new("La", (32, 32), (100, 128)))[0, :, 5, 5].tolist() == [227, 227, 227]


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_modes_are_refused_with_the_reason(mode: str) -> None:
    with pytest.raises(PreprocessError, match=f"got PIL mode '{mode}', whose range is unknown"):
        preprocess(Image.new(mode, (32, 32)))


def test_a_pixel_cap_refuses_huge_declared_sizes_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (40, 30), (9, 9, 9)).save(tmp_path / "a.png")
    monkeypatch.setenv("TINIEST_MAX_PIXELS", "1000")
    message = r"a\.png': expected at most 1,000 pixels \(TINIEST_MAX_PIXELS\).* it declares 40x30 = 1,200 pixels"
    with pytest.raises(PreprocessError, match=message):
        preprocess(tmp_path / "a.png")
    with pytest.raises(PreprocessError, match="PIL image: expected at most 1,000 pixels"):
        preprocess(Image.new("RGB", (40, 30)))
    monkeypatch.setenv("TINIEST_MAX_PIXELS", "1200")
    assert preprocess(tmp_path / "a.png").shape == (1, 3, 32, 32)
    monkeypatch.setenv("TINIEST_MAX_PIXELS", "lots")
    with pytest.raises(UsageError, match=r"TINIEST_MAX_PIXELS: expected a whole number in \[1, inf\], got 'lots'"):
        preprocess(tmp_path / "a.png")


def declared_png(path: Path, width: int, height: int) -> int:
    """A black RGB PNG of ``width`` x ``height`` written a row at a time (the test never holds its pixels)."""
    squeeze = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    body = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))
    return path.stat().st_size


@pytest.mark.slow
def test_one_image_costs_bounded_memory_whatever_it_declares(tmp_path: Path) -> None:
    """Peak RSS of a fresh process: a 12900x12900 PNG (166 megapixels, under Pillow's bomb limit) is refused
    from its header; a 6000x5000 PNG under the cap (30 megapixels) costs its decoded pixels, about 4 bytes
    each, not the 20-odd bytes per pixel of converting and resizing it whole."""
    bomb, big = tmp_path / "bomb.png", tmp_path / "big.png"
    assert declared_png(bomb, 12900, 12900) < 1_000_000
    declared_png(big, 6000, 5000)
    script = f"""
import resource, warnings, tiniest
warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning for the first file
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
tiniest.preprocess(tiniest.preprocess.__globals__["torch"].zeros(3, 64, 64))
start = peak()
try:
    tiniest.preprocess({str(bomb)!r})
except tiniest.errors.PreprocessError as error:
    print(error)
after_bomb = peak()
assert tiniest.preprocess({str(big)!r}).shape == (1, 3, 32, 32)
print(after_bomb - start, peak() - start)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    message, grown = done.stdout.strip().splitlines()
    assert "bomb.png': expected at most 33,554,432 pixels" in message and "12900x12900" in message
    bomb_mb, big_mb = (int(v) for v in grown.split())
    assert bomb_mb < 20, f"a refused 12900x12900 PNG grew peak memory by {bomb_mb} MB"
    assert big_mb < 6000 * 5000 * 4 / 2**20 + 60, f"a 30-megapixel PNG grew peak memory by {big_mb} MB"


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    """A FIFO named like an image blocked predict for ever; folders, devices and sockets are refused too."""
    import os
    import socket

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    script = f"""
import tiniest
model = tiniest.Tiniest().eval()
print(tiniest.predict([{str(fifo)!r}], model=model, errors="report")[0].error)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "x.png' is a FIFO (named pipe), not a regular file" in done.stdout
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s.png"))
    try:
        for name, kind in [("folder.png", "a folder"), ("zero.png", "a character device"), ("s.png", "a socket")]:
            with pytest.raises(PreprocessError, match=f"cannot read image file .*{name}' is {kind}, not a regular"):
                preprocess(tmp_path / name)
    finally:
        server.close()


def test_a_pipe_or_an_unseekable_stream_is_refused_before_any_read() -> None:
    """Pillow would read a stream it cannot seek whole into memory, whatever its size: refused in one line."""
    import io
    import os

    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe, pytest.raises(PreprocessError, match=r"expected a regular file, got p"):
        preprocess(pipe)
    os.close(write_end)

    class Upload(io.RawIOBase):  # a socket-like body: readable, not seekable
        def readable(self) -> bool:
            return True

    with pytest.raises(PreprocessError, match="expected a seekable binary file, got a stream: read it into bytes"):
        preprocess(Upload())


def test_a_closed_file_is_a_preprocess_error_so_report_mode_goes_on(pixels: np.ndarray, tmp_path: Path) -> None:
    """fileno() or seekable() of a closed file raised a bare ValueError: predict failed even with errors='report'."""
    import io

    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    with open(path, "rb") as handle:
        pass
    closed_buffer = io.BytesIO(path.read_bytes())
    closed_buffer.close()
    for closed, origin in [(handle, f"cannot read image file {str(path)!r}"), (closed_buffer, "cannot read image")]:
        with pytest.raises(PreprocessError, match=rf"^{origin}.*: expected an open binary file, got a closed file$"):
            preprocess(closed)
    answers = tiniest.predict([handle, path, closed_buffer], model=tiniest.Tiniest().eval(), errors="report")
    assert [answer.error is None for answer in answers] == [False, True, False]
    assert answers[0].error is not None and answers[0].error.endswith("got a closed file")


@pytest.mark.parametrize("size", [(0, 0), (5, 0), (0, 5)])
def test_a_pil_image_without_pixels_is_refused_like_an_empty_array(size: tuple[int, int]) -> None:
    """Height 0 made torch.cat([]) raise a RuntimeError, width 0 a ZeroDivisionError, outside the decode wrapping."""
    width, height = size
    with pytest.raises(PreprocessError, match=rf"^PIL image: expected a non-empty image, got {width}x{height} pixels$"):
        preprocess(Image.new("RGB", size))
    answers = tiniest.predict([Image.new("RGB", size)], model=tiniest.Tiniest().eval(), errors="report")
    assert answers[0].error is not None and "non-empty image" in answers[0].error


def test_an_unidentified_image_is_named_by_its_path_or_size_never_a_descriptor(tmp_path: Path) -> None:
    """Pillow's "cannot identify image file <_io.BufferedReader name=3>" named a file descriptor."""
    fake = tmp_path / "page.png"
    fake.write_bytes(b"<!DOCTYPE html><html></html>")
    cases = [(fake, f"cannot read image file {str(fake)!r}"), (fake.read_bytes(), "image bytes (28 bytes)")]
    for value, origin in cases:
        with pytest.raises(PreprocessError) as caught:
            preprocess(value)
        message = str(caught.value)
        assert origin in message and "<!DOCTYP" in message and "\n" not in message
        assert "_io." not in message and "name=" not in message, message


def test_quantize_leaves_its_input_alone_and_rounds_as_before() -> None:
    """In-place ops on a tiny tensor went through the intra-op thread pool (41 ms a call on a loaded machine)."""
    from tiniest.transforms import _quantize

    unit = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    unit[0, 0, 0, :5] = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0])
    kept = unit.clone()
    quantized = _quantize(unit)
    assert torch.equal(unit, kept), "the input was overwritten"
    assert torch.equal(quantized, kept.mul(255).round().clamp(0, 255).to(torch.uint8))
    assert quantized.dtype == torch.uint8 and quantized[0, 0, 0, :5].tolist() == [0, 0, 2, 254, 255]


def icon_holding(png: bytes, kind: str) -> bytes:
    """An ICO (directory saying 256x256) or ICNS (an ``ic10`` block, 1024x1024) whose one frame is ``png``."""
    if kind == "ico":
        entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)
        return b"\0\0\1\0" + struct.pack("<H", 1) + entry + png
    return b"icns" + struct.pack(">I", 16 + len(png)) + b"ic10" + struct.pack(">I", 8 + len(png)) + png


def progressive_jpeg(width: int, height: int) -> bytes:
    """A tiny progressive JPEG whose frame header (SOF2) is made to announce ``width`` x ``height``."""
    import io

    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, "JPEG", progressive=True)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc2")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("kind", ["ico", "icns", "progressive"])
@pytest.mark.slow
def test_images_are_refused_from_what_their_decoder_will_decode_before_decoding(tmp_path: Path, kind: str) -> None:
    """An ICO or ICNS (named .png) holding a 13000x13000 PNG was decoded whole before being refused (+660 MB,
    20 s) or not refused at all; a progressive JPEG announcing 16000x16000 passed the cap at its reduced draft
    size while libjpeg held every coefficient of the full image (+1.0 GB). With Pillow's own limit off,
    each is one PreprocessError, at +20 MB at most."""
    path = tmp_path / "icon.png"
    if kind == "progressive":
        path.write_bytes(progressive_jpeg(16000, 16000))
    else:
        declared_png(tmp_path / "frame.png", 13000, 13000)
        path.write_bytes(icon_holding((tmp_path / "frame.png").read_bytes(), kind))
    assert path.stat().st_size < 2_000_000
    script = f"""
import resource, warnings, tiniest
from PIL import Image
Image.MAX_IMAGE_PIXELS = None  # what many ML scripts do: our cap must hold alone
warnings.simplefilter("ignore")
tiniest.preprocess(tiniest.preprocess.__globals__["torch"].zeros(3, 64, 64))
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    tiniest.preprocess({str(path)!r})
except tiniest.errors.PreprocessError as error:
    print(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, f"not refused: {done.stdout}"
    message, grown = lines
    assert "icon.png': expected at most 33,554,432 pixels" in message, message
    assert ("16000x16000" if kind == "progressive" else "13000x13000") in message
    assert int(grown) < 20, f"peak memory grew by {grown} MB"
