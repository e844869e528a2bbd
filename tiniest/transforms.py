"""From the pictures people have to the tensor a model expects (by default ``(N, 3, 32, 32)``, RGB in [0, 1] minus 0.5).

The input contract is numbers (``PREPROCESSING``: size, interpolation, antialias, mean, std, color);
weights carry theirs in their metadata (``meta["preprocessing"]``) so that it travels with them, and
``Preprocess.from_meta`` reads it back (``preprocess_for`` from a model's ``meta``). This module
imports nothing of tiniest but errors, env, extras and files. Accepted inputs:

* a path (``str`` or ``os.PathLike``) to an image file (a regular file: a FIFO, folder or device named
  like an image is refused), the file's bytes (``bytes``, ``bytearray``, ``memoryview``), a binary
  file object open for reading and seekable (``io.BytesIO``, ``open(path, "rb")``, a web framework's
  upload such as Starlette's ``UploadFile.file``; read from its start, left open), or a
  ``PIL.Image.Image``: the EXIF orientation is applied; 1-bit,
  grayscale, palette, CMYK, YCbCr, LAB and HSV images become RGB by Pillow's conversion; transparent
  images (RGBA, LA, PA, palette with transparency, premultiplied RGBa and La) are composited onto white;
  16-bit images keep the high byte of each value (what Pillow itself does for 16-bit RGB); 32-bit
  integer and float modes, whose range is unknown, are refused. JPEG files (and bytes) are decoded at a reduced
  scale (``Image.draft``, at least twice the target size, like ``Image.thumbnail``), so a 12-megapixel
  photo costs a few MB, not hundreds. An image larger than ``MAX_PIXELS`` once decoded
  (``$TINIEST_MAX_PIXELS``) is refused from its header, before decoding; whatever the decoder
  raises on a broken file becomes a ``PreprocessError`` naming it;
* a numpy array, channels last: ``(H, W, C)`` or ``(N, H, W, C)``;
* a torch tensor, channels first: ``(C, H, W)`` or ``(N, C, H, W)``;
* a list or tuple (any sequence but a string or bytes) of any of these (concatenated into one batch).

Arrays and tensors are ``uint8`` (0..255) or floating point in [0, 1] (NaN and inf refused), with
``C`` = 3 (RGB), 1 (grayscale, repeated) or 4 (RGBA, composited onto white). Any other size than
the contract's (32x32) is resized straight to it (bilinear with antialiasing by default; the aspect ratio
is not kept, as CIFAR-10 images are square crops already): crop your picture first if its subject is off-centre.
"""

from __future__ import annotations

import io
import os
import re
import reprlib
import stat
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TypeAlias

import torch
import torch.nn.functional as F
from torch import nn

from tiniest.env_numbers import env_int
from tiniest.errors import PreprocessError, TiniestError
from tiniest.extras import require_extra
from tiniest.files import open_regular

if TYPE_CHECKING:
    import numpy
    from PIL.Image import Image as PILImage

__all__ = [
    "INTERPOLATIONS",
    "PREPROCESSING",
    "ImageInput",
    "Images",
    "Preprocess",
    "decode_image",
    "default_preprocess",
    "image_items",
    "preprocess",
    "preprocess_for",
    "require_images_extra",
]

# The input contract new weights are written with (tiniest.weights.metadata stamps it on them), as
# numbers: RGB in [0, 1], resized straight to ``size``, then ``(x - mean) / std`` per channel. A weights
# file carries its own (``meta["preprocessing"]``), read by Preprocess.from_meta; the pinned release's
# record states the same contract (tests/weights/test_record.py checks it).
PREPROCESSING: dict[str, Any] = {
    "size": [32, 32],
    "interpolation": "bilinear",
    "antialias": True,
    "mean": [0.5, 0.5, 0.5],
    "std": [1.0, 1.0, 1.0],
    "color": "RGB",
}
INTERPOLATIONS = ("bilinear", "bicubic")  # what F.interpolate antialiases, and what the stripes resize separably
# The largest input side a weights file's preprocessing may ask for: Tiniest was trained on 32x32, and an
# input this large already costs 12 MB per image (float32 RGB) before the model runs.
MAX_INPUT_SIDE = 1024
_EXPECTED = {  # what each number of the contract may be, for the messages
    "size": f"[height, width], two whole numbers from 1 to {MAX_INPUT_SIDE}",
    "interpolation": " or ".join(repr(mode) for mode in INTERPOLATIONS),
    "antialias": "true or false",
    "mean": "three numbers from -1 to 1, one per RGB channel",  # of pixels in [0, 1]: a mean beyond is none
    "std": "three numbers from 0.01 to 100, one per RGB channel",  # a spread beyond is no normalization
}


class _Resize(NamedTuple):
    """How the readers resize: to ``size`` (height, width), by ``mode``, antialiased or not."""

    size: tuple[int, int]
    mode: str
    antialias: bool

ImageInput: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | PILImage | numpy.ndarray[Any, Any]"
    " | torch.Tensor"
)
"""One input: a path, an encoded file's bytes or binary file object, a PIL image, an array or a tensor."""
Images: TypeAlias = "ImageInput | Sequence[ImageInput]"
"""What ``preprocess`` and ``tiniest.predict`` take: one input, or a list (any sequence) of them."""
_BYTES = (bytes, bytearray, memoryview)

# What each PIL mode becomes (tests/test_transforms.py checks them one by one).
_STRAIGHT_ALPHA = {"RGBA", "LA", "PA"}  # composited onto white (palette transparency too)
_PREMULTIPLIED = {"RGBa", "La"}  # colour already multiplied by alpha: onto white is colour + (255 - alpha)
_16_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}  # the high byte of each value
_COLOR = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}  # Pillow's own conversion to RGB
_UNKNOWN_RANGE = {"I", "F"}  # 32-bit integer or float: no range to read them in, refused

# The most pixels one image may have once decoded (after JPEG's reduced-scale decoding), 2**25 (8192x4096),
# and the longest side (JPEG's and WebP's own limit). Pillow keeps at most 4 bytes per pixel; everything
# after the decode works on stripes of rows (_STRIPE_PIXELS), so one image costs at most about 4 bytes per
# pixel plus 50 MB: under 200 MB at the cap, where a 12900x12900 PNG (below Pillow's bomb limit) cost 2.6 GB.
MAX_PIXELS = 2**25
MAX_PIXELS_VARIABLE = "TINIEST_MAX_PIXELS"
MAX_SIDE = 65535
_STRIPE_PIXELS = 2**20


def _decoder_errors() -> tuple[type[BaseException], ...]:
    """What Pillow's decoders raise on a broken or hostile file (its own fuzzing tests accept these)."""
    from PIL import Image

    return (
        OSError,
        SyntaxError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        EOFError,
        ZeroDivisionError,
        OverflowError,
        MemoryError,
        struct.error,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,  # raised when warnings are errors
    )


def require_images_extra(*modules: str) -> None:
    """Import Pillow (and ``modules``), or raise ``MissingExtraError`` naming the extra that brings them."""
    require_extra("images", "PIL", *modules, purpose="reading images")


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None:
        return f"{type(x).__module__}.{type(x).__name__} of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(x).__module__}.{type(x).__name__}"


def _check_pixels(image: Any, origin: str) -> None:
    """Refuse, before decoding, an empty image or one larger than the caps: its header alone says its size."""
    width, height = image.size
    _check_size(width, height, origin)


def _check_size(width: int, height: int, origin: str, what: str = "it declares") -> None:
    """Refuse an empty size, or one over ``MAX_PIXELS`` (``$TINIEST_MAX_PIXELS``) or ``MAX_SIDE``.

    Ours, whatever Pillow's own ``Image.MAX_IMAGE_PIXELS`` is set to (ML scripts often set it to ``None``).
    """
    cap = env_int(MAX_PIXELS_VARIABLE, MAX_PIXELS, low=1)
    if width == 0 or height == 0:  # nothing to resize (the stripes would be none, or of zero width)
        raise PreprocessError(f"{origin}: expected a non-empty image, got {width}x{height} pixels")
    if width * height > cap or max(width, height) > MAX_SIDE:
        raise PreprocessError(
            f"{origin}: expected at most {cap:,} pixels ({MAX_PIXELS_VARIABLE}) and sides of at most "
            f"{MAX_SIDE:,}, {what} {width}x{height} = {width * height:,} pixels"
        )


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MOST_FRAMES = 256  # icons hold a handful of sizes


def _frame_size(stream: IO[bytes], offset: int) -> tuple[int, int] | None:
    """The size an icon's frame at ``offset`` declares: a PNG's IHDR, or a BMP's info header (XOR and AND
    masks stacked: half its height); ``None`` for anything else."""
    stream.seek(offset)
    head = stream.read(24)
    if head[:8] == _PNG_MAGIC and len(head) == 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if len(head) >= 12 and struct.unpack("<I", head[:4])[0] in (12, 40, 52, 56, 108, 124):
        width, height = struct.unpack("<ii", head[4:12])
        return abs(width), abs(height) // 2
    return None


def _check_container(stream: IO[bytes], origin: str) -> None:
    """Refuse an ICO, CUR or ICNS file holding a frame over the caps, before Pillow opens it.

    Their directories announce at most 256x256 (ICO) or 1024x1024 (ICNS), but a frame is a whole PNG or
    BMP of any size, decoded in full (ICO: by ``Image.open`` itself) before its true size is known: a
    13000x13000 PNG in an ICO named ``.png`` cost +660 MB and 20 s. Every frame's own header is read
    (Pillow decodes the largest, so any frame over the caps refuses the file).
    """
    stream.seek(0)
    head = stream.read(8)
    frames: list[int] = []
    if head[:4] in (b"\0\0\1\0", b"\0\0\2\0"):  # ICO, CUR: a directory of 16-byte entries
        count = struct.unpack("<H", head[4:6])[0]
        if count > _MOST_FRAMES:
            raise PreprocessError(f"{origin}: expected an icon of at most {_MOST_FRAMES} frames, it declares {count}")
        for index in range(count):
            stream.seek(6 + 16 * index + 12)
            entry = stream.read(4)
            if len(entry) == 4:
                frames.append(struct.unpack("<I", entry)[0])
    elif head[:4] == b"icns":  # blocks of (type, length), from byte 8
        offset = 8
        for _ in range(_MOST_FRAMES):
            stream.seek(offset)
            block = stream.read(8)
            if len(block) < 8 or struct.unpack(">I", block[4:])[0] < 8:
                break
            frames.append(offset + 8)
            offset += struct.unpack(">I", block[4:])[0]
    for offset in frames:
        size = _frame_size(stream, offset)
        if size is not None:
            _check_size(size[0], size[1], origin, what="a frame of it declares")
    stream.seek(0)


def _pil_to_unit(image: Any, *, origin: str, how: _Resize, quantized: bool = False) -> torch.Tensor:
    """A PIL image as ``(1, 3, *how.size)`` float RGB in [0, 1]: upright, alpha composited onto white, resized.

    Decoding happens here (PIL opens lazily): whatever Pillow raises becomes a ``PreprocessError``.
    Converted and resized across a stripe of rows at a time, so that only the decoded image is held whole.
    ``quantized``: as rounded uint8 (``_quantize``); a picture already upright and of the size is
    its own RGB pixels then (the float round trip gives them back exactly, at twice Pillow's CPU).
    """
    require_images_extra()
    from PIL import ExifTags

    if image.mode in _UNKNOWN_RANGE:
        raise PreprocessError(
            f"{origin}: expected an 8- or 16-bit image (RGB, RGBA, grayscale or palette), got PIL mode "
            f"{image.mode!r}, whose range is unknown: scale it to 8 bits first"
        )
    if image.mode not in {*_STRAIGHT_ALPHA, *_PREMULTIPLIED, *_16_BIT, *_COLOR}:
        raise PreprocessError(f"{origin}: expected an image in a known PIL mode, got {image.mode!r}")
    _check_pixels(image, origin)
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        height, width = how.size[::-1] if orientation in (5, 6, 7, 8) else how.size  # before turning upright
        full_width, full_height = image.size
        if quantized and orientation == 1 and (full_height, full_width) == how.size:
            return _rgb_pixels(image).permute(2, 0, 1).unsqueeze(0).contiguous()
        rows = max(1, _STRIPE_PIXELS // full_width)
        stripes = [  # the horizontal half of the separable resize, a stripe at a time
            _resize(_rgb(image.crop((0, top, full_width, min(full_height, top + rows)))), how, (-1, width), last=False)
            for top in range(0, full_height, rows)
        ]
    except TiniestError:  # ours, already saying what went wrong
        raise
    except _decoder_errors() as error:
        message = _without_file_objects(error)
        raise PreprocessError(f"{origin}: expected a readable image ({type(error).__name__}: {message})") from None
    whole = stripes[0] if len(stripes) == 1 else torch.cat(stripes, dim=2)
    unit = _upright(_resize(whole, how, (height, width)), orientation)
    return _quantize(unit) if quantized else unit


def _upright(batch: torch.Tensor, orientation: int) -> torch.Tensor:
    """``batch`` turned as EXIF ``orientation`` asks (what ``ImageOps.exif_transpose`` does to a picture)."""
    turned = {
        2: lambda: batch.flip(3),
        3: lambda: batch.flip(2, 3),
        4: lambda: batch.flip(2),
        5: lambda: batch.transpose(2, 3),
        6: lambda: batch.rot90(-1, dims=(2, 3)),
        7: lambda: batch.transpose(2, 3).flip(2, 3),
        8: lambda: batch.rot90(1, dims=(2, 3)),
    }.get(orientation)
    return turned().contiguous() if turned is not None else batch


def _rgb(image: Any) -> torch.Tensor:
    """A PIL image in one of the modes above as ``(1, 3, H, W)`` float RGB in [0, 1]."""
    return _rgb_pixels(image).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def _rgb_pixels(image: Any) -> torch.Tensor:
    """A PIL image in one of the modes above as ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    mode = image.mode
    if mode in _16_BIT:  # the high byte of each value, what Pillow keeps of 16-bit RGB
        gray = _pixels(image.convert("I"), torch.int32, 1).bitwise_right_shift(8).clamp_(0, 255).to(torch.uint8)
        pixels = gray.expand(-1, -1, 3)
    elif mode in _PREMULTIPLIED:
        both = _pixels(image, torch.uint8, len(mode)).to(torch.int16)
        pixels = (both[..., :-1] + (255 - both[..., -1:])).clamp_(0, 255).to(torch.uint8).expand(-1, -1, 3)
    else:
        if mode in _STRAIGHT_ALPHA or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        pixels = _pixels(image.convert("RGB"), torch.uint8, 3)
    return pixels


def _pixels(image: Any, dtype: torch.dtype, channels: int) -> torch.Tensor:
    """A PIL image's pixels as an ``(H, W, channels)`` tensor (without numpy, which Pillow does not need)."""
    width, height = image.size
    return torch.frombuffer(bytearray(image.tobytes()), dtype=dtype).reshape(height, width, channels)


def _decode(stream: IO[bytes], origin: str, how: _Resize, *, quantized: bool = False) -> torch.Tensor:
    """The encoded image in the seekable binary ``stream`` as ``(1, 3, *how.size)`` float RGB in [0, 1].

    JPEG files are decoded at reduced scale (``draft``) before the pixel cap is checked, so large photos still work;
    progressive JPEGs count at their full size, and icon containers by their frames' own headers.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        _check_container(stream, origin)
        with Image.open(stream) as image:  # a stream the caller opened stays open
            announced = image.size
            side = 2 * max(how.size)  # as Image.thumbnail's reducing_gap=2: scaled in the decoder, then resampled
            image.draft(None, (side, side))
            if image.format == "JPEG" and image.info.get("progressive"):
                # draft scales a progressive JPEG too, but libjpeg keeps every coefficient of the full-size image
                # (2 bytes per sample): a 2 MB file announcing 16000x16000 cost +1.0 GB. Its full size counts.
                _check_size(announced[0], announced[1], origin, what="a progressive JPEG (decoded whole) declares")
            return _pil_to_unit(image, origin=origin, how=how, quantized=quantized)
    except TiniestError:  # ours, already saying what went wrong
        raise
    except UnidentifiedImageError:  # its message names Pillow's file object ("name=3"), not the file
        raise PreprocessError(
            f"{origin}: expected a readable image in a format Pillow reads (PNG, JPEG, BMP, GIF, WebP, TIFF, ...), "
            f"got data it cannot identify, starting {_head(stream)!r}"
        ) from None
    except _decoder_errors() as error:  # opening and identifying the file
        raise PreprocessError(f"{origin}: expected a readable image ({_without_file_objects(error)})") from None


def _head(stream: IO[bytes]) -> bytes:
    """The first 8 bytes of ``stream`` (what a file starts with tells what it is: ``<!DOCTYP``, ``PK``...)."""
    try:
        stream.seek(0)
        return stream.read(8)
    except (OSError, ValueError):
        return b""


_FILE_OBJECT = re.compile(r"<_?io\.\w+ (name=[^>]*|object at 0x[0-9a-f]+)>")


def _without_file_objects(error: BaseException) -> str:
    """A decoder's message without the repr of the file object it was given (``<_io.BufferedReader name=3>``):
    the origin already names the path or the bytes, and a descriptor number says nothing to the reader."""
    return _FILE_OBJECT.sub("the image", str(error))


def _read_file(path: str | os.PathLike[str], how: _Resize, *, quantized: bool = False) -> torch.Tensor:
    """The image file at ``path``, decoded by ``_decode``.

    Only a regular file is opened (a FIFO named ``x.png`` would block for ever).
    """
    require_images_extra()
    origin = f"cannot read image file {os.fspath(path)!r}"
    try:
        handle = open_regular(path)
    except OSError as error:
        raise PreprocessError(f"{origin}: expected a readable image ({error})") from None
    with handle:
        return _decode(handle, origin, how, quantized=quantized)


def _read_stream(stream: Any, how: _Resize) -> torch.Tensor:
    """A binary file object's image, decoded by ``_decode`` as a file of that name would be.

    Read from its start and left open. It must be seekable (Pillow reads an image in several passes;
    a pipe would have to be read whole into memory, whatever its size), and an open file a regular one.
    """
    require_images_extra()
    name = getattr(stream, "name", None)
    origin = f"cannot read image file {name!r}" if isinstance(name, str) else f"cannot read image {_describe(stream)}"
    if isinstance(stream, io.TextIOBase):
        raise PreprocessError(f"{origin}: expected a binary file (opened with 'rb'), got a text file")
    if getattr(stream, "closed", False):  # else fileno() or seekable() raise a bare ValueError
        raise PreprocessError(f"{origin}: expected an open binary file, got a closed file")
    raw = getattr(stream, "raw", stream)  # what open() gives; fileno() would write a spooled upload to disk
    if isinstance(raw, io.FileIO) and not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
        raise PreprocessError(f"{origin}: expected a regular file, got {stat.filemode(os.fstat(raw.fileno()).st_mode)}")
    seekable = getattr(stream, "seekable", None)
    if not (seekable() if callable(seekable) else callable(getattr(stream, "seek", None))):
        raise PreprocessError(f"{origin}: expected a seekable binary file, got a stream: read it into bytes first")
    return _decode(stream, origin, how)


def _read_bytes(data: bytes | bytearray | memoryview, how: _Resize) -> torch.Tensor:
    """An encoded image file's bytes, decoded by ``_decode`` as the file would be."""
    require_images_extra()
    return _decode(io.BytesIO(data), f"cannot read image bytes ({len(data):,} bytes)", how)


def decode_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """One image file as uint8 RGB of the contract's size (``(3, 32, 32)``): the form datasets are cached in.

    Cached datasets hold what new weights are trained on, so they follow ``PREPROCESSING``.
    """
    return _read_file(path, _DEFAULT.resizing, quantized=True)[0]


def _quantize(unit: torch.Tensor) -> torch.Tensor:
    """Float values in [0, 1] as rounded uint8 0..255; ``unit`` is left as it is.

    Rounded half to even (as ``torch.round``) by adding and taking away 2**23, where float32's step is 1:
    torch's ``round`` and ``floor`` hand even a 3,072-value tensor to the intra-op thread pool, which cost
    7-41 ms of CPU a picture on a loaded machine; additions and clamps stay in the calling thread.
    """
    scaled = unit * 255  # a new tensor: the in-place steps below leave ``unit`` alone
    return scaled.clamp_(0, 255).add_(_ROUNDING).sub_(_ROUNDING).to(torch.uint8)


_ROUNDING = float(2**23)  # x + 2**23 - 2**23 rounds float32 values in [0, 2**23) to the nearest integer, ties to even


def _resize(
    batch: torch.Tensor, how: _Resize, size: tuple[int, int] | None = None, *, last: bool = True
) -> torch.Tensor:
    """``batch`` resized straight as ``how`` says, to ``size`` (default ``how.size``; -1: keep that side).

    Bicubic overshoots at edges: its values are clamped back to [0, 1] after the ``last`` pass (the
    stripes' first pass is not: a clamp in between would change the answer), as Pillow clamps to 0..255.
    """
    size = size or how.size
    size = (size[0] if size[0] > 0 else batch.shape[-2], size[1] if size[1] > 0 else batch.shape[-1])
    if tuple(batch.shape[-2:]) == size:
        return batch
    resized = F.interpolate(batch, size=size, mode=how.mode, antialias=how.antialias, align_corners=False)
    return resized.clamp_(0, 1) if how.mode == "bicubic" and last else resized


def _channels_first(
    x: torch.Tensor, *, origin: str, layout: str, shape: tuple[int, ...], hint: str = ""
) -> torch.Tensor:
    """Check an NCHW tensor's channels and values; return float in [0, 1], 3 channels.

    ``shape`` is the input's shape as the user gave it, for the messages; ``hint`` follows a wrong channel count.
    """
    if x.shape[0] == 0:
        raise PreprocessError(f"{origin}: expected at least one image, got an empty batch of shape {shape}")
    channels = x.shape[1]
    if channels not in (1, 3, 4):
        raise PreprocessError(
            f"{origin}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels in layout {layout}, "
            f"got {channels} (shape {shape}){hint}"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise PreprocessError(f"{origin}: expected a non-empty image, got shape {shape}")
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    elif x.is_floating_point():
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise PreprocessError(f"{origin}: expected finite values in [0, 1], got NaN or inf")
        low, high = float(x.min()), float(x.max())
        if low < 0 or high > 1:
            raise PreprocessError(
                f"{origin}: expected floating point values in [0, 1] (or uint8 in 0..255), "
                f"got values in [{low:g}, {high:g}]"
            )
    else:
        raise PreprocessError(f"{origin}: expected uint8 or floating point values, got dtype {x.dtype}")
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 4:
        rgb, alpha = x[:, :3], x[:, 3:]
        x = rgb * alpha + (1 - alpha)
    return x


def _to_unit_batches(x: Any, how: _Resize) -> Iterator[torch.Tensor]:
    """Any accepted input as ``(N, 3, H, W)`` float batches in [0, 1], one at a time (files decoded for ``how``).

    A generator, so that the caller can resize each batch before the next file is decoded.
    """
    if isinstance(x, (str, os.PathLike)):
        yield _read_file(x, how)
        return
    if isinstance(x, _BYTES):
        yield _read_bytes(x, how)
        return
    if callable(getattr(x, "read", None)):
        yield _read_stream(x, how)
        return
    if isinstance(x, torch.Tensor):
        shape = tuple(x.shape)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise PreprocessError(f"expected a tensor of shape (C, H, W) or (N, C, H, W), got {_describe(x)}")
        hint = ""
        if x.shape[3] in (1, 3, 4):
            axes = "(2, 0, 1)" if len(shape) == 3 else "(0, 3, 1, 2)"
            hint = f"; it looks channels last: tensors are read channels first, pass x.permute{axes}"
        layout = "(C, H, W)" if len(shape) == 3 else "(N, C, H, W)"
        yield _channels_first(x, origin="tensor", layout=layout, shape=shape, hint=hint)
        return
    if _is_sequence(x):
        for item in image_items(x):
            yield from _to_unit_batches(item, how)
        return
    kind = type(x)
    if kind.__module__.startswith("PIL.") or kind.__module__ == "PIL":
        yield _pil_to_unit(x, origin="PIL image", how=how)
        return
    if kind.__module__ == "numpy" and kind.__name__ == "ndarray":
        if x.ndim not in (3, 4):
            raise PreprocessError(
                f"expected a numpy array of shape (H, W, C) or (N, H, W, C), channels last, got {_describe(x)}"
            )
        if x.dtype.kind not in "uf" or (x.dtype.kind == "u" and x.dtype.itemsize != 1):
            raise PreprocessError(f"expected a uint8 or floating point numpy array, got dtype {x.dtype}")
        batch = torch.from_numpy(x.copy())
        batch = batch.unsqueeze(0) if batch.dim() == 3 else batch
        hint = ""
        if batch.shape[1] in (1, 3, 4):
            axes = "(1, 2, 0)" if x.ndim == 3 else "(0, 2, 3, 1)"
            hint = f"; it looks channels first: numpy arrays are read channels last, pass x.transpose{axes}"
        yield _channels_first(
            batch.permute(0, 3, 1, 2),
            origin="numpy array",
            layout="(H, W, C)" if x.ndim == 3 else "(N, H, W, C)",
            shape=tuple(x.shape),
            hint=hint,
        )
        return
    raise PreprocessError(
        "expected an image path, bytes, a binary file, a PIL image, a numpy array, a tensor or a list of them, "
        f"got {_describe(x)}"
    )


def _is_sequence(x: Any) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, (str, *_BYTES))


def image_items(x: Images) -> list[ImageInput]:
    """The inputs in ``x``: its items if it is a list (any sequence but a string or bytes), else ``[x]``."""
    if not _is_sequence(x):
        return [x]  # type: ignore[list-item]  # not a sequence: one input
    items = list(x)  # type: ignore[arg-type]
    if not items:
        raise PreprocessError("expected at least one image, got an empty list")
    return items


def _mistake(key: str, expected: str, got: Any) -> PreprocessError:
    return PreprocessError(f"preprocessing {key!r}: expected {expected}, got {reprlib.repr(got)}")


def _triple(key: str, value: Any, low: float, high: float) -> tuple[float, float, float]:
    """Three finite numbers from ``low`` to ``high``, one per RGB channel (NaN fails the comparison)."""
    if not (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(type(v) in (int, float) and low <= v <= high for v in value)
    ):
        raise _mistake(key, _EXPECTED[key], value)
    return float(value[0]), float(value[1]), float(value[2])


class Preprocess(nn.Module):
    """Images in any accepted form (see module docs) to a model's ``(N, 3, H, W)`` float input.

    Built from numbers (the keyword arguments; default: ``PREPROCESSING``, that of the published
    weights) or from a weights file's own ``meta["preprocessing"]`` (``from_meta``), so that every
    caller applies the contract the weights state. A module with no parameters, so that it can sit in
    front of the model in an ``nn.Sequential`` when the input is already a tensor.
    """

    def __init__(
        self,
        size: Sequence[int] | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
        antialias: bool | None = None,
    ) -> None:
        super().__init__()
        given = {"size": size, "mean": mean, "std": std, "interpolation": interpolation, "antialias": antialias}
        contract = {**PREPROCESSING, **{key: value for key, value in given.items() if value is not None}}
        sides = contract["size"]
        if not (
            isinstance(sides, Sequence)
            and not isinstance(sides, str)
            and len(sides) == 2
            and all(type(side) is int and 1 <= side <= MAX_INPUT_SIDE for side in sides)
        ):
            raise _mistake("size", _EXPECTED["size"], sides)
        if contract["interpolation"] not in INTERPOLATIONS:
            raise _mistake("interpolation", _EXPECTED["interpolation"], contract["interpolation"])
        if type(contract["antialias"]) is not bool:
            raise _mistake("antialias", _EXPECTED["antialias"], contract["antialias"])
        self.size: tuple[int, int] = (sides[0], sides[1])
        self.interpolation: str = contract["interpolation"]
        self.antialias: bool = contract["antialias"]
        self.mean = _triple("mean", contract["mean"], -1.0, 1.0)
        self.std = _triple("std", contract["std"], 0.01, 100.0)
        self.resizing = _Resize(self.size, self.interpolation, self.antialias)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Preprocess:
        """Build from a weights file's ``meta["preprocessing"]``; refuse a policy this code does not implement.

        It comes from a weights file, so anything may be there: a value of the wrong kind is a
        ``PreprocessError`` saying what was expected, never a bare ``ValueError`` or ``TypeError``.
        """
        if not isinstance(meta, Mapping):
            raise PreprocessError(f"preprocessing: expected a JSON object (a mapping), got {type(meta).__name__}")
        numbers = dict(meta)
        if set(numbers) != set(PREPROCESSING):
            raise PreprocessError(
                f"preprocessing: expected the keys {', '.join(PREPROCESSING)}, "
                f"got {reprlib.repr(sorted(map(str, meta)))}"
            )
        if numbers["color"] != "RGB":
            raise PreprocessError(f"preprocessing 'color': this version implements 'RGB', the weights ask "
                                  f"{reprlib.repr(numbers['color'])}")
        for key in ("size", "interpolation", "antialias", "mean", "std"):
            if numbers[key] is None:  # None means "the default" to the constructor, never in a file
                raise _mistake(key, _EXPECTED[key], None)
        return cls(
            numbers["size"],
            mean=numbers["mean"],
            std=numbers["std"],
            interpolation=numbers["interpolation"],
            antialias=numbers["antialias"],
        )

    @property
    def contract(self) -> dict[str, Any]:
        """These numbers as a weights file states them (``PREPROCESSING``'s keys, JSON types)."""
        return {
            "size": list(self.size),
            "interpolation": self.interpolation,
            "antialias": self.antialias,
            "mean": list(self.mean),
            "std": list(self.std),
            "color": "RGB",
        }

    def to_unit(self, x: Images) -> torch.Tensor:
        """``x`` as ``(N, 3, *size)`` float RGB in [0, 1], resized but not normalized (what a picture shows)."""
        batches = [_resize(batch, self.resizing) for batch in _to_unit_batches(x, self.resizing)]
        return torch.cat(batches) if len(batches) > 1 else batches[0]

    def normalize(self, unit: torch.Tensor) -> torch.Tensor:
        """``(unit - mean) / std`` per channel of an ``(N, 3, H, W)`` batch in [0, 1], out of place."""
        mean = unit.new_tensor(self.mean).view(1, 3, 1, 1)
        std = unit.new_tensor(self.std).view(1, 3, 1, 1)
        return (unit - mean) / std

    def random_input(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch`` random pictures as the model receives them: examples for exporters and compilers."""
        return self.normalize(torch.rand(batch, 3, *self.size, generator=generator))

    def forward(self, x: Images) -> torch.Tensor:
        return self.normalize(self.to_unit(x))

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, interpolation={self.interpolation}, antialias={self.antialias}, "
            f"mean={self.mean}, std={self.std}, color=RGB"
        )


_DEFAULT = Preprocess()


def default_preprocess() -> Preprocess:
    """The contract new weights are written with (``PREPROCESSING``): for callers without weights' own."""
    return _DEFAULT


def preprocess_for(meta: Mapping[str, Any] | None) -> Preprocess:
    """What a model's metadata says its inputs are (``meta["preprocessing"]``), else ``PREPROCESSING``.

    Weights of another size or normalization are fed what they were trained on, never the default.
    """
    policy = (meta or {}).get("preprocessing")
    return _DEFAULT if policy is None else Preprocess.from_meta(policy)


def preprocess(x: Images) -> torch.Tensor:
    """``x`` (path, bytes, binary file, PIL image, numpy array, tensor, or a list of them) as the model's input.

    Uses ``PREPROCESSING``, the published weights' contract; other weights' own is
    ``preprocess_for(model.meta)`` (what ``tiniest.predict`` and ``tiniest.evaluate`` apply).
    """
    out: torch.Tensor = _DEFAULT(x)
    return out
