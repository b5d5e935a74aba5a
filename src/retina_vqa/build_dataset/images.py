"""The image bytes the dataset stores: each file decoded once, downsized to ``--max_image_side``, re-encoded.

This module owns `encode_image`. A fundus photograph of 3-18 megapixels is decoded at a reduced JPEG DCT
scale (``Image.draft``: 1/2, 1/4 or 1/8, the largest that keeps the longer side >= ``max_side``), so memory
and time follow the output size, not the camera's; EXIF orientation and other modes than RGB go through
`retina_vqa.data.images.to_rgb`, as everywhere in the project; then a bilinear resize to ``max_side`` and a
JPEG at ``jpeg_quality``. Bilinear, because the factor left after the draft is below 2, where Pillow's
antialiased bilinear filter is within 1 dB of bicubic and Lanczos (49.5 against 50.2 dB PSNR to a Lanczos
resize of the full-resolution decode, on a 3.5 MP photograph to 1024 px; re-encoding as JPEG quality 95
costs more, 45 dB) at a third of bicubic's time and a quarter of Lanczos'.

Files already within ``max_side`` in JPEG or PNG are stored as they are (decoded once to prove them whole),
and ``keep_original`` stores every file as it is: no second lossy encoding.
"""

from __future__ import annotations

import io
import math

from PIL import Image

from ..data.images import ImageLoadError, load_image, to_rgb

__all__ = ["KEPT_FORMATS", "encode_image"]

# Formats every reader of the dataset (datasets' Image feature, Pillow, the collator) decodes.
KEPT_FORMATS = ("JPEG", "PNG")
_VERIFY_SIDE = 256
_HINT = "Re-download or re-export the file, or pass --skip_invalid to drop it."


def _open(path: str) -> tuple[Image.Image, io.BufferedReader]:
    try:
        f = open(path, "rb")  # closed by the caller once the pixels are decoded
    except OSError as error:
        raise ImageLoadError(f"file '{path}'", f"the file cannot be read ({error})", _HINT) from error
    try:
        return Image.open(f), f
    except Image.DecompressionBombError as error:
        f.close()
        raise ImageLoadError(f"file '{path}'", f"the image is too large to decode safely ({error})", _HINT) from error
    except Exception as error:  # Pillow's format plugins raise many types for malformed headers.
        f.close()
        raise ImageLoadError(f"file '{path}'", f"not a readable image ({error})", _HINT) from error


def encode_image(path: str, max_side: int, keep_original: bool = False, jpeg_quality: int = 95) -> bytes:
    """The bytes to store for the image at ``path`` (see the module docstring). Raises `ImageLoadError`."""
    if keep_original:
        # A reduced-scale decode still reads every byte, so a corrupt or truncated file fails here.
        load_image(path, max_side=_VERIFY_SIDE)
        with open(path, "rb") as f:
            return f.read()
    image, f = _open(path)
    where = f"file '{path}'"
    try:
        if max(image.size) <= max_side and image.format in KEPT_FORMATS:
            to_rgb(image, where=where)  # decodes every byte: a corrupt file fails here
            f.seek(0)
            return f.read()
        if image.format == "JPEG":
            scale = max_side / max(image.size)
            draft = (max(1, math.ceil(image.width * scale)), max(1, math.ceil(image.height * scale)))
            image.draft("RGB" if image.mode == "RGB" else None, draft)
        try:
            image.load()
        except Exception as error:  # Any decoder failure here means the file is broken.
            raise ImageLoadError(where, f"the image data cannot be decoded ({error})", _HINT) from error
        # The common case, an RGB photograph without EXIF rotation, skips to_rgb's defensive copy.
        rgb = image if image.mode == "RGB" and image.getexif().get(0x0112, 1) == 1 else to_rgb(image, where=where)
    finally:
        f.close()
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (min(max_side, max(1, round(rgb.width * scale))), min(max_side, max(1, round(rgb.height * scale))))
        # reducing_gap: formats without draft (PNG, TIFF) first shrink by an integer box filter, which is much
        # faster on large images and looks the same.
        rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=jpeg_quality)
    return out.getvalue()
