"""Drawing of synthetic colour fundus photographs: one eye from its ground truth to pixels.

This module owns the order in which an eye is painted and what comes back: ``render_eye`` draws the healthy
anatomy (:mod:`.anatomy`), the diabetic retinopathy lesions of an ICDR grade (:mod:`.lesions`), the signs of the
other conditions of a :class:`.conditions.ConditionState` (:mod:`.signs`), then illumination, the image-quality
defects and the field-of-view edge. It returns the image, one box per lesion and the findings a report names.
``render_fundus`` is the DR-only entry point of before (image and boxes). Nothing here knows about questions,
rows or splits.

Two kinds of generator feed it. The main one draws the anatomy, the DR lesions and the photographic defects,
always in the same order; the other conditions draw from generators of their own, so adding them never moves
a DR draw: with no other condition the pixels are exactly those of the DR-only generator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..questions import FINDINGS
from . import signs
from .anatomy import FOV_RADIUS_FRACTION, draw_anatomy, draw_vessels, fov_geometry, pixel_grid
from .conditions import ConditionState
from .lesions import add_dr_lesions

__all__ = [
    "FOV_RADIUS_FRACTION",
    "LATERALITIES",
    "MIN_IMAGE_SIZE",
    "QUALITIES",
    "QUALITY_DEFECTS",
    "DEFAULT_QUALITY_DEFECTS",
    "RenderedEye",
    "fov_geometry",
    "render_eye",
    "render_fundus",
]

QUALITIES = ("good", "blurred", "underexposed", "overexposed")
# Every photographic defect the renderer draws. The default set is the first three, drawn as they always were; the
# others are opt in (``generate_dataset(quality_defects=...)``): a small pupil (dark vignetting closing in from the
# rim) and eyelashes (dark blurred streaks and bright reflection haze at one edge). Any defect makes the image
# ungradable (the quality answer "no").
QUALITY_DEFECTS = ("blurred", "underexposed", "overexposed", "small_pupil", "eyelashes")
DEFAULT_QUALITY_DEFECTS = QUALITIES[1:]
LATERALITIES = ("left", "right")
MIN_IMAGE_SIZE = 64

# DR lesion box type -> the finding a report names for it.
_DR_FINDINGS = {
    "microaneurysm": "microaneurysms",
    "haemorrhage": "haemorrhages",
    "hard_exudate": "hard_exudates",
    "cotton_wool_spot": "cotton_wool_spots",
    "neovascularisation": "neovascularisation",
    "preretinal_haemorrhage": "preretinal_haemorrhage",
}
# Grade from which the vessel drawing beads the veins (anatomy.draw_vessels).
_VENOUS_BEADING_GRADE = 3


@dataclass
class RenderedEye:
    """One drawn eye: the RGB image, a box per lesion (``type``, ``x0``, ``y0``, ``x1``, ``y1``), the findings it
    shows (ids of ``questions.FINDINGS``, in that order) and the drawn vertical cup-to-disc ratio (when glaucoma
    is drawn)."""

    image: Image.Image
    lesions: list[dict[str, Any]]
    findings: tuple[str, ...] = ()
    cup_to_disc: float | None = None


def _check(grade: int, laterality: str, quality: str) -> None:
    if grade not in range(5):
        raise ValueError(f"grade must be 0-4, got {grade}")
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be one of {LATERALITIES}, got {laterality!r}")
    if quality != "good" and quality not in QUALITY_DEFECTS:
        raise ValueError(f"quality must be one of {('good', *QUALITY_DEFECTS)}, got {quality!r}")


def render_fundus(
    rng: np.random.Generator,
    image_size: int,
    grade: int,
    laterality: str,
    quality: str = "good",
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw one colour fundus photograph with lesions for an ICDR ``grade`` (0-4).

    Returns the RGB image and one box per lesion instance (``type``, ``x0``, ``y0``, ``x1``, ``y1`` in
    pixels, clipped to the image). A right eye has its optic disc on the right of the image.
    """
    eye = render_eye(rng, image_size, grade, laterality, quality)
    return eye.image, eye.lesions


def render_eye(
    rng: np.random.Generator,
    image_size: int,
    grade: int,
    laterality: str,
    quality: str = "good",
    state: ConditionState | None = None,
    sign_rngs: Mapping[str, np.random.Generator] | None = None,
) -> RenderedEye:
    """Draw one eye with DR ``grade`` (0-4) and, when ``state`` is given, the other conditions it lists.

    ``rng`` is the main generator (anatomy, DR lesions, photographic defects); ``sign_rngs`` maps each other
    condition ("glaucoma", "amd", "hypertensive", "rvo") to the generator its signs draw from, needed for the
    conditions ``state`` enables.
    """
    _check(grade, laterality, quality)
    state = state or ConditionState()
    others = [c for c in state.enabled if c != "dr"]
    missing = [c for c in others if sign_rngs is None or c not in sign_rngs]
    if missing:
        raise ValueError(f"render_eye needs a generator in sign_rngs for each enabled condition; missing {missing}")
    size = int(image_size)
    yy, xx = pixel_grid(size)
    cx, cy, fov_r = fov_geometry(size)

    img, anatomy = draw_anatomy(rng, size, laterality)
    findings: set[str] = set()
    sign_lesions: list[dict[str, Any]] = []
    if "glaucoma" in others:
        # Before the vessels, which cross the rim and dip into the cup on top of it.
        findings |= signs.draw_glaucoma_disc(sign_rngs["glaucoma"], img, anatomy, state.glaucoma, state.cup_to_disc)

    # Vessels: veins darker and wider than arteries, both tinting what is underneath.
    vein_paths: list[tuple[np.ndarray, float, float, bool]] | None = [] if others else None
    artery_scale = signs.artery_scale(state.hypertensive)
    veins, arteries = draw_vessels(
        rng,
        size,
        anatomy.disc,
        anatomy.disc_r,
        anatomy.fovea,
        anatomy.nasal_sign,
        grade,
        artery_scale=artery_scale,
        vein_paths=vein_paths,
    )
    if "hypertensive" in others:
        veins, nicks = signs.draw_av_nicking(sign_rngs["hypertensive"], veins, arteries, anatomy, state.hypertensive)
        sign_lesions += nicks
    img *= 1.0 - veins[..., None] * (1.0 - np.array([0.55, 0.22, 0.3], np.float32))
    img *= 1.0 - arteries[..., None] * (1.0 - np.array([0.88, 0.5, 0.55], np.float32))
    if "hypertensive" in others:
        signs.draw_arteriolar_reflex(img, arteries, state.hypertensive)
    occluded = signs.occluded_veins(vein_paths or [], state.rvo, state.rvo_quadrant) if "rvo" in others else []
    if "rvo" in others and state.rvo != "none":
        signs.draw_dilated_veins(sign_rngs["rvo"], img, anatomy, occluded)

    lesions = add_dr_lesions(rng, img, size, grade, anatomy.fovea, anatomy.disc, anatomy.disc_r)
    findings |= {_DR_FINDINGS[b["type"]] for b in lesions}
    if grade >= _VENOUS_BEADING_GRADE:
        findings.add("venous_beading")

    # The other conditions' signs on top of the DR lesions, each drawing (findings, boxes), in this order.
    drawn = []
    if "amd" in others:
        drawn.append(signs.draw_amd(sign_rngs["amd"], img, anatomy, state.amd))
    if "hypertensive" in others:
        drawn.append(signs.draw_hypertensive(sign_rngs["hypertensive"], img, anatomy, state.hypertensive))
    if "rvo" in others:
        drawn.append(signs.draw_vein_occlusion(sign_rngs["rvo"], img, anatomy, occluded, state.rvo, state.rvo_quadrant))
    if "glaucoma" in others:
        drawn.append(signs.draw_disc_haemorrhage(sign_rngs["glaucoma"], img, anatomy, state.glaucoma))
    for found, boxes in drawn:
        findings |= found
        sign_lesions += boxes
    lesions += sign_lesions

    # Illumination: vignetting towards the rim, brightness/contrast jitter, soft field-of-view edge.
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / fov_r
    img *= (1.0 - 0.5 * np.clip(dist, 0, 1) ** 2.4)[..., None]
    gain = rng.uniform(0.88, 1.12)
    contrast = rng.uniform(0.9, 1.15)
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = (img - mean) * contrast + mean
    img *= gain
    img = _apply_quality(rng, img, size, quality)
    img *= np.clip((fov_r - dist * fov_r) + 0.5, 0.0, 1.0)[..., None]
    arr = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    out = Image.fromarray(arr, mode="RGB")
    if quality == "blurred":
        out = out.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.008, 0.014) * size))
    ordered = tuple(f for f in FINDINGS if f in findings)
    return RenderedEye(out, lesions, ordered, state.cup_to_disc if "glaucoma" in others else None)


def _apply_quality(rng: np.random.Generator, img: np.ndarray, size: int, quality: str) -> np.ndarray:
    if quality == "underexposed":
        img = np.clip(img, 0.0, None) ** 1.25 * rng.uniform(0.32, 0.45)
    elif quality == "overexposed":
        grey = img.mean(axis=2, keepdims=True)
        img = (0.55 * img + 0.45 * grey) * rng.uniform(1.7, 2.1) + 0.12
    elif quality == "small_pupil":
        img = _small_pupil(rng, img, size)
    elif quality == "eyelashes":
        img = _eyelashes(rng, img, size)
    return img


def _small_pupil(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """A pupil too small for the camera: the illumination falls off well inside the field of view, leaving a bright
    disc of 35-55% of its radius (a little off centre) in a dark, faintly orange surround, as undilated photographs
    look."""
    yy, xx = pixel_grid(size)
    cx, cy, fov_r = fov_geometry(size)
    cx += rng.uniform(-0.08, 0.08) * fov_r
    cy += rng.uniform(-0.08, 0.08) * fov_r
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / fov_r
    inner = rng.uniform(0.35, 0.55)
    edge = rng.uniform(0.12, 0.22)  # width of the fall-off: a soft ring, not a sharp stop
    light = np.clip((inner + edge - dist) / edge, 0.0, 1.0) ** 1.5
    floor = rng.uniform(0.04, 0.1)
    surround = np.array([floor * 1.6, floor * 0.7, floor * 0.4], np.float32)  # stray orange glow of the iris
    return img * light[..., None] + surround * (1.0 - light[..., None]) * 0.5


def _eyelashes(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """Eyelashes and lid in the light path: dark blurred curved streaks across one edge of the field (upper or
    lower lid), with a bright hazy reflection arc along the rim next to them."""
    cx, cy, fov_r = fov_geometry(size)
    side = -1.0 if rng.random() < 0.7 else 1.0  # the upper lid more often than the lower
    lashes = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(lashes)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(int(rng.integers(5, 10))):
        # Each lash a curved stroke (a quadratic Bezier curve) from beyond the rim into the field, bent sideways.
        angle = side * np.pi / 2 + rng.uniform(-0.9, 0.9)
        length = rng.uniform(0.3, 0.6)
        start = np.array([np.cos(angle), np.sin(angle)]) * 1.08
        tip = angle + rng.uniform(-0.5, 0.5)
        end = np.array([np.cos(tip), np.sin(tip)]) * (1.0 - length)
        normal = np.array([-start[1], start[0]]) / 1.08
        control = (start + end) / 2 + normal * rng.uniform(-0.25, 0.25)
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
        points = [(cx + x * fov_r, cy + y * fov_r) for x, y in curve]
        draw.line(points, fill=255, width=max(2, int(rng.uniform(0.025, 0.05) * size)), joint="curve")
    lashes = lashes.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.012, 0.025) * size))
    shade = np.clip(np.asarray(lashes, np.float32)[..., None] / 255.0 * 1.6, 0.0, 1.0)

    yy, xx = pixel_grid(size)
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / fov_r
    # Reflection haze: brightest at the rim on the lid's side, fading inwards and round the circle.
    toward = np.clip(side * (yy - cy) / fov_r, 0.0, 1.0)
    rim = np.exp(-(((dist - rng.uniform(0.8, 0.9)) / rng.uniform(0.08, 0.14)) ** 2))
    haze = rng.uniform(0.55, 0.85) * rim * toward**1.5
    img = img + haze[..., None] * np.array([0.95, 0.95, 1.0], np.float32)
    # The lashes in front of the haze: they shade whatever light reaches the camera behind them.
    return img * (1.0 - rng.uniform(0.8, 0.92) * shade)
