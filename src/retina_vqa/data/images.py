"""Image loading for retina-vqa: the single place that turns whatever image a user has into an RGB PIL image.

This module owns:

* decoding every supported source kind (path, raw bytes, file-like object, PIL image, numpy array, or a
  ``datasets`` ``Image`` feature dict ``{"bytes": ..., "path": ...}``) into an RGB :class:`PIL.Image.Image`;
* the mode conversion policy (alpha, palette, CMYK, 16-bit, float, bilevel, EXIF orientation);
* optional downsizing of very large photographs while keeping memory bounded;
* a cheap header probe and a content hash for data-validation and train/test leakage checks;
* :class:`ImageLoadError`, the one error type raised for images a user supplied that cannot be used;
* references of question rows made from image rows (``data.image_table``): resolved to the stored image wherever an
  image is opened, and keyed by the SHA-1 they carry without reading the image.

Conversion policy (the choices other modules can rely on):

* EXIF orientation is applied, so the pixels come out the way a viewer shows them.
* Transparent pixels are composited on **black**, not white: fundus photographs have a black surround, so a
  transparent border that turned white would add a bright ring the model has never seen.
* High-bit-depth integer data (``I;16*`` and ``I`` modes, ``uint16``/wider integer arrays) is *scaled* to
  8 bits, never clipped. The scale is the smallest common sensor bit depth (8, 10, 12, 14 or 16 bits) that
  holds the image's maximum value, so a full-range 16-bit image is divided by 257 and a 12-bit image stored in
  a 16-bit container is divided by 4095/255. Scaling by bit depth, rather than stretching each image
  min-to-max, keeps the relative brightness of dark and bright photographs comparable. Data that fits no
  such range (negative values, or above 16 bits) is stretched min-to-max.
* Floating-point data in ``[0, 1]`` is multiplied by 255; data in ``[0, 255]`` is used as is; anything else is
  stretched min-to-max. NaN and infinite values become 0.
* Pillow's decompression-bomb limit (:data:`PIL.Image.MAX_IMAGE_PIXELS`) is left at its default. Pillow
  warns with :class:`PIL.Image.DecompressionBombWarning` above the limit (that warning is passed through
  unchanged) and raises :class:`PIL.Image.DecompressionBombError` above twice the limit, which is reported
  here as :class:`ImageLoadError` explaining how to raise the limit for trusted images.
* Truncated files are rejected: :data:`PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is never switched on here, and
  every image is fully decoded inside the error handling so a cut-off file fails at load time, not later
  inside a data loader worker.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Mapping
from typing import IO, Any, TypeAlias

import numpy as np
from PIL import Image, ImageOps

from . import image_table

__all__ = ["ImageLoadError", "ImageSource", "image_sha1", "load_image", "probe_image", "to_rgb"]

# Everything load_image accepts; see its docstring for the details of each kind.
ImageSource: TypeAlias = (
    str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray | Mapping
)

# Standard sensor bit depths tried, in order, when scaling high-bit-depth integer data down to 8 bits.
_BIT_DEPTHS = (8, 10, 12, 14, 16)
_HASH_CHUNK = 1 << 20


class ImageLoadError(ValueError):
    """An image supplied by the user cannot be decoded or used.

    The message names the source (a file path, or the ``where=`` text such as ``"row 3 of split train, column
    image"``), the reason, and a hint on how to fix it. The parts are kept as attributes for callers that
    aggregate errors, e.g. a validation pass that reports every bad row at once.
    """

    def __init__(self, source: str, reason: str, hint: str = "") -> None:
        self.source = source
        self.reason = reason
        self.hint = hint
        message = f"Cannot load image from {source}: {reason}."
        if hint:
            message += f" {hint}"
        super().__init__(message)


# ----------------------------------------------------------------------------------------------------
# Source description and error helpers
# ----------------------------------------------------------------------------------------------------


def _describe(source: Any, where: str | None) -> str:
    """Human-readable name of a source: the caller's ``where`` if given, plus the file path if known."""
    path = _path_of(source)
    if where and path:
        return f"{where} (file '{path}')"
    if where:
        return where
    if path:
        return f"file '{path}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"{len(source)} bytes of in-memory data"
    if isinstance(source, Image.Image):
        return "a PIL image"
    if isinstance(source, np.ndarray):
        return f"a numpy array of shape {source.shape}"
    return f"a {type(source).__name__} object"


def _path_of(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Mapping) and source.get("path"):
        return os.fspath(source["path"])
    if isinstance(source, Image.Image):
        # Images opened with Image.open(path) remember the path; that is the most useful name to report.
        filename = getattr(source, "filename", "")
        return filename if isinstance(filename, str) and filename else None
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


_DECODE_HINT = (
    "The data is not a complete image in a format Pillow can read (JPEG, PNG, TIFF, BMP, ...); "
    "re-export or re-download the file, or drop this row."
)


def _bomb_error(source_desc: str, exc: BaseException) -> ImageLoadError:
    return ImageLoadError(
        source_desc,
        f"the image is too large to decode safely ({exc})",
        "Pillow refuses images above twice PIL.Image.MAX_IMAGE_PIXELS "
        f"(currently {Image.MAX_IMAGE_PIXELS}) to guard against decompression bombs. "
        "If the image is trusted, raise the limit before loading, "
        "e.g. `PIL.Image.MAX_IMAGE_PIXELS = 400_000_000`, and pass max_side= to keep memory bounded.",
    )


def _check_nonempty(width: int, height: int, source_desc: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(
            source_desc,
            f"the image has zero size ({width}x{height})",
            "Remove this row or replace the file with a real image.",
        )


# ----------------------------------------------------------------------------------------------------
# Opening sources
# ----------------------------------------------------------------------------------------------------


def _missing_file_error(path: str, source_desc: str) -> ImageLoadError:
    return ImageLoadError(
        source_desc,
        f"no such file '{path}' (resolved against the working directory '{os.getcwd()}')",
        "Check that the image column holds the right paths, that relative paths are relative to the "
        "directory you run from, and that the images were downloaded/extracted.",
    )


def _open_stream(source: Any, source_desc: str) -> tuple[IO[bytes], bool]:
    """Return a binary stream for an encoded source and whether this module opened it (and must close it)."""
    if isinstance(source, Mapping):
        data = source.get("bytes")
        path = source.get("path")
        if data is not None:
            return _open_stream(data, source_desc)
        if image_table.is_reference(path):
            return _open_stream(_referenced(path, source_desc), source_desc)
        if path:
            return _open_stream(path, source_desc)
        raise ImageLoadError(
            source_desc,
            "the image dict has neither 'bytes' nor 'path' set",
            "Expected a datasets Image feature value like {'bytes': b'...', 'path': 'x.jpg'}; check the image column.",
        )
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise _missing_file_error(path, source_desc)
        try:
            return open(path, "rb"), True
        except OSError as exc:
            raise ImageLoadError(
                source_desc, f"the file cannot be opened ({exc})", "Check the file permissions."
            ) from exc
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(source_desc, "the data is empty (0 bytes)", _DECODE_HINT)
        return io.BytesIO(bytes(source)), True
    if hasattr(source, "read"):
        # Pillow seeks while identifying formats, so a pipe or socket is buffered into memory first.
        seekable = getattr(source, "seekable", None)
        if seekable is None or not seekable():
            return io.BytesIO(source.read()), True
        return source, False
    raise TypeError(
        f"Unsupported image source type {type(source).__name__}; expected a path, bytes, "
        "a binary file object, a PIL image, a numpy array, "
        "or a datasets Image dict {'bytes': ..., 'path': ...}."
    )


def _referenced(path: str, source_desc: str) -> dict:
    """The stored image a question row's reference points to (`data.image_table`)."""
    try:
        return image_table.read_reference(path)
    except image_table.UnknownImageTable as exc:
        raise ImageLoadError(source_desc, str(exc), "Load the dataset with retina_vqa.data.loading.") from exc


def _open_image(stream: IO[bytes], source_desc: str) -> Image.Image:
    """Identify the format and read the header only (no pixel decode)."""
    try:
        image = Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(source_desc, exc) from exc
    except Exception as exc:  # Pillow's format plugins raise many types for malformed headers.
        if _stream_is_empty(stream):
            raise ImageLoadError(source_desc, "the file is empty (0 bytes)", _DECODE_HINT) from exc
        raise ImageLoadError(source_desc, f"the data is not a readable image ({exc})", _DECODE_HINT) from exc
    _check_nonempty(image.width, image.height, source_desc)
    return image


def _stream_is_empty(stream: IO[bytes]) -> bool:
    try:
        return stream.seek(0, io.SEEK_END) == 0
    except (OSError, ValueError):
        return False


def _draft_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = max_side / max(size)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


# ----------------------------------------------------------------------------------------------------
# Pixel conversion
# ----------------------------------------------------------------------------------------------------


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map integer, boolean or float pixel data to uint8 following the module's documented policy."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        data = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(data.min()), float(data.max())
        if low >= 0.0 and high <= 1.0:
            data = data * 255.0
        elif not (low >= 0.0 and high <= 255.0):
            data = _stretch(data, low, high)
        return np.clip(np.rint(data), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low >= 0:
            for bits in _BIT_DEPTHS:
                top = (1 << bits) - 1
                if high <= top:
                    if bits == 8:
                        return array.astype(np.uint8)
                    # float32 is exact enough for 16-bit data and halves the memory of float64 on big images.
                    return np.rint(array.astype(np.float32) * np.float32(255.0 / top)).astype(np.uint8)
        return np.clip(np.rint(_stretch(array.astype(np.float64), low, high)), 0, 255).astype(np.uint8)
    raise TypeError(f"unsupported pixel data type {array.dtype}")


def _stretch(data: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        # A constant image has no range to stretch; black is the neutral fundus background.
        return np.zeros_like(data)
    return (data - low) * (255.0 / (high - low))


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, (0, 0, 0))
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def _check_array(array: np.ndarray, source_desc: str) -> np.ndarray:
    """Validate an array's shape and dtype; return it as HxW or HxWx3/4 (trailing 1-channel axis dropped)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] not in (3, 4) and array.shape[0] in (1, 3, 4):
        raise ImageLoadError(
            source_desc,
            f"the array looks channels-first (shape {array.shape})",
            "Pass an HxWxC array, e.g. `array.transpose(1, 2, 0)`.",
        )
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            source_desc,
            f"unsupported array shape {array.shape}",
            "Pass an HxW (grayscale), HxWx3 (RGB) or HxWx4 (RGBA) array.",
        )
    if not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_
    ):
        raise ImageLoadError(
            source_desc,
            f"unsupported array dtype {array.dtype}",
            "Pass uint8, uint16 or float (values in [0, 1]) pixel data.",
        )
    _check_nonempty(array.shape[1], array.shape[0], source_desc)
    return array


_ARRAY_MODES = {2: "L", 3: "RGB", 4: "RGBA"}


def _array_mode(array: np.ndarray) -> str:
    return _ARRAY_MODES[array.shape[-1] if array.ndim == 3 else 2]


def _array_to_image(array: np.ndarray, source_desc: str) -> Image.Image:
    array = _check_array(array, source_desc)
    return Image.fromarray(np.ascontiguousarray(_scale_to_uint8(array)))


def _mode_to_rgb(image: Image.Image, source_desc: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        return _composite_on_black(image.convert("RGBA"))
    if mode in ("RGBX", "L", "P", "CMYK", "YCbCr", "HSV", "1"):
        # "1" converts to 0/255 grey and CMYK/YCbCr/HSV have built-in converters; Adobe's inverted CMYK JPEGs
        # are already un-inverted by Pillow's JPEG decoder.
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        # Pillow's own convert() clips I;16/I/F data to 255, which turns most 16-bit photos white.
        gray = _scale_to_uint8(np.asarray(image))
        return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(
            source_desc,
            f"images in mode {mode!r} cannot be converted to RGB ({exc})",
            "Convert the image to RGB with an image editor or export it as 8-bit RGB PNG/JPEG.",
        ) from exc


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    size = (min(size[0], max_side), min(size[1], max_side))
    # reducing_gap first box-reduces by an integer factor, which is much faster on huge images and
    # visually indistinguishable from a pure LANCZOS resize.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")


def to_rgb(image: Image.Image, where: str | None = None, max_side: int | None = None) -> Image.Image:
    """Return an RGB copy of ``image`` with EXIF orientation applied and, optionally, its longer side capped.

    Args:
        image: any PIL image; a lazily opened one is fully decoded here so truncation errors surface now.
        where: description of the source for error messages, e.g. ``"row 3 of split train, column image"``.
        max_side: if given, downsize (never upsize) so that ``max(width, height) <= max_side``.

    Raises:
        ImageLoadError: the image is empty, truncated/undecodable, or in a mode that has no RGB conversion.
    """
    _check_max_side(max_side)
    return _to_rgb(image, _describe(image, where), max_side)


def _to_rgb(image: Image.Image, source_desc: str, max_side: int | None) -> Image.Image:
    _check_nonempty(image.width, image.height, source_desc)
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _bomb_error(source_desc, exc) from exc
    except Exception as exc:  # Any decoder failure here means the user's image data is broken.
        raise ImageLoadError(source_desc, f"the image data cannot be decoded ({exc})", _DECODE_HINT) from exc
    try:
        oriented = ImageOps.exif_transpose(image) or image
    except Exception:  # A malformed EXIF block should not make otherwise good pixels unusable.
        oriented = image
    rgb = _mode_to_rgb(oriented, source_desc)
    if max_side is not None:
        rgb = _shrink(rgb, max_side)
    if rgb is image:
        # Never hand back the caller's own object: later in-place edits must not change their image.
        rgb = rgb.copy()
    return rgb


def load_image(source: ImageSource, where: str | None = None, max_side: int | None = None) -> Image.Image:
    """Load any supported image source as an RGB PIL image.

    Args:
        source: a path (``str``/``Path``), raw encoded bytes, a binary file-like object, a PIL image, a
            numpy array (HxW, HxWx1, HxWx3 or HxWx4; uint8, uint16/other integers, bool, or float in
            ``[0, 1]``), or a ``datasets`` Image feature dict ``{"bytes": ..., "path": ...}`` (``bytes`` wins
            when both are set).
        where: description of the source for error messages, e.g. ``"row 3 of split train, column image"``.
        max_side: if given, downsize so the longer side is at most ``max_side``. JPEGs are decoded at a
            reduced scale (``Image.draft``), so very large photographs never occupy full-resolution memory.

    Raises:
        ImageLoadError: missing/empty/truncated/undecodable file, zero-size image, decompression bomb, or an
            array of unsupported shape or dtype.
        TypeError: ``source`` is of a type this function does not understand (a programming error).
    """
    _check_max_side(max_side)
    source_desc = _describe(source, where)
    if isinstance(source, Image.Image):
        return _to_rgb(source, source_desc, max_side)
    if isinstance(source, np.ndarray):
        return _to_rgb(_array_to_image(source, source_desc), source_desc, max_side)

    stream, owned = _open_stream(source, source_desc)
    try:
        image = _open_image(stream, source_desc)
        if max_side is not None and max(image.size) > max_side:
            # Only JPEG implements draft(); elsewhere it is a no-op. Drafting at a size no smaller than the
            # target keeps the final LANCZOS resize doing the quality-relevant work.
            image.draft("RGB" if image.mode == "RGB" else None, _draft_size(image.size, max_side))
        # to_rgb decodes fully while the stream is still open.
        return _to_rgb(image, source_desc, max_side)
    finally:
        if owned:
            stream.close()


def probe_image(source: ImageSource, where: str | None = None) -> tuple[int, int, str]:
    """Return ``(width, height, mode)`` of an image by reading its header only.

    Meant for a fast data-validation pass over a whole dataset. The size is the displayed size, i.e. with
    EXIF orientation applied (width and height swapped for rotated photos), so it matches what
    :func:`load_image` returns before any ``max_side``. The mode is the stored mode (e.g. ``"I;16"``,
    ``"CMYK"``), before conversion to RGB. Because pixels are not decoded, a file truncated in its pixel data
    passes this check; only :func:`load_image` catches that.

    Raises:
        ImageLoadError: missing or empty file, unrecognised format, zero size, or decompression bomb.
    """
    source_desc = _describe(source, where)
    if isinstance(source, np.ndarray):
        array = _check_array(source, source_desc)
        return array.shape[1], array.shape[0], _array_mode(array)
    if isinstance(source, Image.Image):
        image = source
        _check_nonempty(image.width, image.height, source_desc)
        width, height = image.size
        mode = image.mode
    else:
        stream, owned = _open_stream(source, source_desc)
        try:
            image = _open_image(stream, source_desc)
            width, height = image.size
            mode = image.mode
        finally:
            if owned:
                stream.close()
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # A malformed EXIF block does not stop the image from loading; ignore it here too.
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height, mode


def image_sha1(source: ImageSource) -> str:
    """SHA-1 hex digest identifying an image's content, for duplicate and train/test leakage checks.

    Encoded sources (paths, bytes, file objects, datasets dicts) are hashed over their raw file bytes, so the
    same file always hashes the same regardless of how it is later decoded. PIL images and numpy arrays are
    hashed over their decoded pixels together with mode/dtype and size. The two kinds are not comparable: a
    file and the PIL image decoded from it give different digests, so hash every split the same way.

    Raises:
        ImageLoadError: a path that does not exist, or a datasets dict with neither bytes nor path.
    """
    digest = hashlib.sha1()
    if isinstance(source, Image.Image):
        digest.update(f"PIL:{source.mode}:{source.width}x{source.height}:".encode())
        digest.update(source.tobytes())
        return digest.hexdigest()
    if isinstance(source, np.ndarray):
        array = np.ascontiguousarray(source)
        digest.update(f"ndarray:{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.tobytes())
        return digest.hexdigest()
    if isinstance(source, Mapping) and source.get("bytes") is None and image_table.is_reference(source.get("path")):
        # Hashed once, when the question rows were made from the image rows.
        known = image_table.reference_sha1(source["path"])
        if known:
            return known
    source_desc = _describe(source, None)
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
        return digest.hexdigest()
    stream, owned = _open_stream(source, source_desc)
    start = None if owned else _tell(stream)
    try:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    finally:
        if owned:
            stream.close()
        elif start is not None:
            # Leave the caller's file where it was, so it can still be decoded afterwards.
            stream.seek(start)
    return digest.hexdigest()


def image_key(source: ImageSource | None) -> str:
    """The one identity of an image in this project: its `image_sha1`, never raising.

    Rows whose images have the same key share one image: the collator sends it once per batch, the image
    encoder's outputs are kept under it, validation decodes it once and compares splits by it, answering
    encodes it once. A missing or unreadable source gets a key that names the problem (validation reports
    the row); it never matches a readable image.
    """
    if source is None or (isinstance(source, Mapping) and not source.get("bytes") and not source.get("path")):
        return "missing"
    try:
        return image_sha1(source)
    except ImageLoadError as error:
        return f"unreadable:{error.source}: {error.reason}"


def _tell(stream: IO[bytes]) -> int | None:
    try:
        return stream.tell()
    except (OSError, ValueError):
        return None
