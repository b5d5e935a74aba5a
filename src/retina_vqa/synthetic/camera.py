"""Camera and site profiles: how one drawn eye looks through another fundus camera.

A model trained on one site's photographs loses accuracy on the next camera (RETFound trained on APTOS: AUROC 0.943
on APTOS, 0.822 on IDRiD, 0.738 on Messidor-2). This module owns ``CAMERAS``, the profiles the synthetic generator can
photograph an eye with, and ``apply_camera``, which turns the renderer's image into that camera's photograph: colour
cast (per-channel gain and gamma), illumination fall-off towards the rim, field of view and mask shape (the scale of
the retina in the frame, the radius of the field, flat top and bottom edges, an orientation notch), resolution
(downsampled then upsampled) and blur, and the file format (JPEG at the profile's quality). Each image also draws a
little variation of its own (exposure, cast, fall-off, blur) from its camera generator, as two photographs from one
camera are never identical.

``"default"`` is the renderer's image itself, stored as PNG: the generator never calls ``apply_camera`` for it, so its
output is byte for byte that of before. The other profiles change the pixels only, never the eye: the rows answer what
the eye has (a lesion that a narrower field or a clipped edge hides is still answered), as a grader of the full eye
would, so that a drop across cameras is the camera's doing. Lesion boxes follow the retina when a profile rescales it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .anatomy import FOV_RADIUS_FRACTION, pixel_grid

__all__ = ["CAMERAS", "DEFAULT_CAMERA", "CameraProfile", "apply_camera", "encode_image", "parse_camera"]

DEFAULT_CAMERA = "default"


@dataclass(frozen=True)
class CameraProfile:
    """One camera (and the site's habits with it). Every field's neutral value leaves the image as drawn."""

    description: str
    # Colour cast: out = gain * in ** gamma per channel (R, G, B), on [0, 1] intensities.
    channel_gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_gamma: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Illumination fall-off beyond the renderer's: 1 - vignetting * r ** 2 at radius r of the field (r = 1 at the rim).
    vignetting: float = 0.0
    # Field of view: the retina is rescaled about the centre by `retina_scale` (below 1: a wider angle, each
    # structure smaller, more black surround); the field is then cut to `field_radius` of the drawn circle's radius
    # (below 1: a narrower field, the periphery black); `clip_top_bottom` blackens that fraction of the frame's
    # height at the top and at the bottom (the flat edges of many cameras' masks); `notch` cuts a small triangular
    # notch into the rim at 3 o'clock (the orientation mark of some cameras).
    retina_scale: float = 1.0
    field_radius: float = 1.0
    clip_top_bottom: float = 0.0
    notch: bool = False
    # Resolution: downsampled to this fraction of the side and upsampled back (a lower-resolution sensor), then a
    # Gaussian blur of this radius as a fraction of the side (optics, focus).
    resolution: float = 1.0
    blur: float = 0.0
    # JPEG quality of the stored file (None: PNG, lossless).
    jpeg_quality: int | None = None
    # Per image: exposure and each channel's gain vary by up to this fraction, vignetting and blur by up to twice it.
    jitter: float = 0.0

    @property
    def image_format(self) -> str:
        return "PNG" if self.jpeg_quality is None else "JPEG"


CAMERAS: dict[str, CameraProfile] = {
    DEFAULT_CAMERA: CameraProfile("the renderer's image as drawn, stored as PNG (the generator's output of before)"),
    "desktop_45": CameraProfile(
        "a tabletop 45-degree mydriatic camera at a hospital clinic (the EyePACS / Messidor kind): warm cast, mild "
        "fall-off, the circle's top and bottom clipped flat by the frame, full resolution, JPEG 92",
        channel_gain=(1.08, 0.96, 0.86),
        channel_gamma=(0.92, 1.0, 1.08),
        vignetting=0.15,
        clip_top_bottom=0.07,
        jpeg_quality=92,
        jitter=0.03,
    ),
    "handheld": CameraProfile(
        "a handheld non-mydriatic camera in primary care or a screening van: a narrower, dimmer field with strong "
        "fall-off and an orientation notch, green-yellow cast, half the resolution, soft focus, JPEG 70",
        channel_gain=(0.9, 1.05, 0.8),
        channel_gamma=(1.1, 0.95, 1.15),
        vignetting=0.45,
        field_radius=0.88,
        notch=True,
        resolution=0.5,
        blur=0.006,
        jpeg_quality=70,
        jitter=0.06,
    ),
    "widefield": CameraProfile(
        "a wide-angle (60-degree) camera at a retina service: the retina at 0.82 of the scale (disc, vessels and "
        "lesions smaller, more black surround; the extra periphery is not drawn), even illumination, cool cast, "
        "three quarters of the resolution, JPEG 85",
        channel_gain=(0.94, 1.0, 1.15),
        channel_gamma=(1.05, 1.0, 0.9),
        vignetting=-0.1,
        retina_scale=0.82,
        resolution=0.75,
        blur=0.002,
        jpeg_quality=85,
        jitter=0.04,
    ),
}


def parse_camera(name: str | None) -> str:
    """Check ``--camera``: one of ``CAMERAS`` (None: the default)."""
    if name is None:
        return DEFAULT_CAMERA
    if name not in CAMERAS:
        raise ValueError(f"--camera {name!r} is not a known camera; choose one of {', '.join(CAMERAS)}")
    return name


def apply_camera(
    profile: CameraProfile, image: Image.Image, lesions: Sequence[dict[str, Any]], rng: np.random.Generator
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """The drawn ``image`` as ``profile`` photographs it, and its lesion boxes moved with the retina.

    ``rng`` is the image's camera generator: the per-image variation (``profile.jitter``) draws from it, always the
    same number of draws, so a profile's images depend on nothing but their own generator.
    """
    size = image.width
    jitter = profile.jitter
    exposure = 1.0 + rng.uniform(-jitter, jitter)
    gains = np.array(profile.channel_gain, np.float32) * (1.0 + rng.uniform(-jitter, jitter, 3)).astype(np.float32)
    vignetting = profile.vignetting * (1.0 + rng.uniform(-2 * jitter, 2 * jitter))
    blur = profile.blur * (1.0 + rng.uniform(-2 * jitter, 2 * jitter))

    boxes = [dict(b) for b in lesions]
    if profile.retina_scale != 1.0:
        image, boxes = _rescale_retina(image, boxes, profile.retina_scale)
    img = np.asarray(image, np.float32) / 255.0
    img = np.clip(img, 0.0, 1.0) ** np.array(profile.channel_gamma, np.float32) * gains * exposure
    yy, xx = pixel_grid(size)
    centre = size / 2.0
    radius = FOV_RADIUS_FRACTION * size * profile.retina_scale
    r = np.sqrt((xx - centre) ** 2 + (yy - centre) ** 2) / radius
    img *= np.clip(1.0 - vignetting * np.clip(r, 0.0, 1.0) ** 2, 0.0, None)[..., None]
    img *= _mask(size, radius, profile)[..., None]
    out = Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    if profile.resolution < 1.0:
        small = max(16, round(size * profile.resolution))
        out = out.resize((small, small), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BICUBIC)
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(radius=blur * size))
    return out, boxes


def encode_image(image: Image.Image, profile: CameraProfile) -> bytes:
    """The stored file of a photograph: PNG as the generator always wrote, or JPEG at the profile's quality."""
    buf = io.BytesIO()
    if profile.jpeg_quality is None:
        image.save(buf, format="PNG", compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=int(profile.jpeg_quality))
    return buf.getvalue()


def _rescale_retina(
    image: Image.Image, boxes: list[dict[str, Any]], scale: float
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """The retina rescaled about the image centre (black outside it); boxes moved and clipped to the frame."""
    size = image.width
    centre = size / 2.0
    # PIL's affine maps output pixels to input pixels.
    inverse = (1.0 / scale, 0.0, centre * (1.0 - 1.0 / scale), 0.0, 1.0 / scale, centre * (1.0 - 1.0 / scale))
    out = image.transform(
        (size, size), Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
    )
    for box in boxes:
        for key in ("x0", "y0", "x1", "y1"):
            box[key] = int(min(max(round(centre + (box[key] - centre) * scale), 0), size))
    return out, boxes


def _mask(size: int, radius: float, profile: CameraProfile) -> np.ndarray:
    """The camera's field: 1 inside, 0 outside, a one-pixel soft edge on the circle."""
    yy, xx = pixel_grid(size)
    centre = size / 2.0
    field = radius * profile.field_radius
    dist = np.sqrt((xx - centre) ** 2 + (yy - centre) ** 2)
    mask = np.clip(field - dist + 0.5, 0.0, 1.0)
    if profile.clip_top_bottom > 0:
        band = profile.clip_top_bottom * size
        mask[(yy < band) | (yy > size - band)] = 0.0
    if profile.notch:
        # A triangle cut into the rim at 3 o'clock, pointing inwards.
        notch = Image.new("L", (size, size), 0)
        depth, half = 0.12 * field, 0.07 * field
        rim = centre + field + 1.0
        ImageDraw.Draw(notch).polygon(
            [(rim, centre - half), (centre + field - depth, centre), (rim, centre + half)], fill=255
        )
        mask *= 1.0 - np.asarray(notch, np.float32) / 255.0
    return mask.astype(np.float32)


def _check_profiles() -> None:
    # The profiles are data: a typo (a negative resolution, a quality of 0) should fail at import, not mid-generation.
    for name, profile in CAMERAS.items():
        ok = (
            0.0 < profile.resolution <= 1.0
            and 0.0 < profile.field_radius <= 1.0
            and 0.0 < profile.retina_scale <= 1.0
            and 0.0 <= profile.clip_top_bottom < 0.5
            and (profile.jpeg_quality is None or 1 <= profile.jpeg_quality <= 95)
            and all(g > 0 and math.isfinite(g) for g in (*profile.channel_gain, *profile.channel_gamma))
        )
        if not ok:
            raise ValueError(f"camera profile {name!r} has out-of-range settings: {profile}")


_check_profiles()
