"""Synthetic retinal fundus VQA data in the exact format of the private training set.

This module owns the synthetic data generator: drawing colour fundus photographs with diabetic
retinopathy lesions graded on the ICDR scale (0-4), turning each image into one question/answer row
per question type, saving the result (``save_to_disk`` or ``imagefolder``) with a dataset card, and a
preview grid for eyeballing the images. The question strings, question-type ids and answer strings
defined here are the contract the rest of the project (tokeniser vocabulary, metrics, baselines)
depends on.

Usage::

    python -m retina_vqa.synthetic --output_dir data/retinavqa-synthetic
    python -m retina_vqa.synthetic --preview preview.png --image_size 384
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
FORMATS = ("save_to_disk", "imagefolder")
QUALITIES = ("good", "blurred", "underexposed", "overexposed")
LATERALITIES = ("left", "right")
MIN_IMAGE_SIZE = 64
# Field-of-view radius as a fraction of the image side; the circle is centred in the image.
FOV_RADIUS_FRACTION = 0.47
PREVIEW_GRID = 4
# Bump when the drawing changes, so that dataset fingerprints (cache keys) change with it.
_GENERATOR_VERSION = 2

DIAGNOSIS_ANSWERS = ("healthy retina", "mild dr", "moderate dr", "severe dr", "proliferative dr")
MODALITY_ANSWER = "color fundus photography"
COUNT_WORDS = ("zero", "one", "two", "three", "four")

LESION_TYPES = (
    "microaneurysm",
    "haemorrhage",
    "hard_exudate",
    "cotton_wool_spot",
    "neovascularisation",
    "preretinal_haemorrhage",
)
# Lesion types that make the haemorrhage questions answer "yes" and count towards quadrants.
HAEMORRHAGE_TYPES = ("haemorrhage", "preretinal_haemorrhage")

BLINDNESS_ANSWERS = (
    "no",
    "yes",
    "yes, moderate diabetic retinopathy can threaten sight if the retinal damage progresses or the macula "
    "swells, so regular screening and good sugar control matter",
    "yes, severe diabetic retinopathy carries a high risk of progressing to proliferative disease within a "
    "year and needs prompt referral to an eye specialist",
    "yes, proliferative diabetic retinopathy is a leading cause of blindness because fragile new vessels can "
    "bleed into the eye or pull the retina away",
)
CAUSE_ANSWERS = (
    "none",
    "long-standing diabetes with high blood sugar that weakens the walls of the small retinal capillaries, "
    "which bulge outwards and form microaneurysms",
    "chronic high blood sugar and blood pressure damage the retinal capillaries so they leak blood and "
    "lipid, leaving haemorrhages and hard exudates in the retina",
    "widespread closure of retinal capillaries after years of poorly controlled diabetes starves the retina "
    "of oxygen, causing many haemorrhages and beading of the veins",
    "severe lack of oxygen in the retina from diabetic capillary closure drives the growth of abnormal new "
    "vessels that bleed easily and can scar the retina",
)


def _question_type(question: str, answer_type: str, paraphrases: Sequence[str]) -> Mapping[str, Any]:
    return MappingProxyType({"question": question, "answer_type": answer_type, "paraphrases": (question, *paraphrases)})


# Ordered: rows of one image follow this order. "paraphrases" starts with the canonical question.
QUESTION_TYPES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "modality": _question_type(
            "what kind of examination is this image?",
            "closed",
            ("what imaging modality was used?", "how was this image acquired?", "what type of scan is this?"),
        ),
        "abnormality": _question_type(
            "is there any abnormality?",
            "closed",
            (
                "does this retina look abnormal?",
                "is anything abnormal in this image?",
                "is this fundus abnormal?",
            ),
        ),
        "diagnosis": _question_type(
            "what is the diagnosis?",
            "closed",
            (
                "what is the most likely diagnosis?",
                "what grade of diabetic retinopathy is shown?",
                "how would you grade this retina?",
            ),
        ),
        "blindness": _question_type(
            "can this condition cause blindness?",
            "open",
            (
                "could this lead to loss of vision?",
                "is this condition a threat to sight?",
                "can this blind the patient?",
            ),
        ),
        "cause": _question_type(
            "what might be the cause of this condition?",
            "open",
            (
                "what causes these findings?",
                "why does this retina look like this?",
                "what is the likely cause?",
            ),
        ),
        "laterality": _question_type(
            "which eye is this?",
            "closed",
            (
                "is this the left or the right eye?",
                "which side is this eye?",
                "is this a left or right fundus?",
            ),
        ),
        "microaneurysms": _question_type(
            "are there microaneurysms?",
            "closed",
            (
                "are any microaneurysms visible?",
                "can you see microaneurysms?",
                "does the image show microaneurysms?",
            ),
        ),
        "haemorrhages": _question_type(
            "are there haemorrhages?",
            "closed",
            (
                "are any haemorrhages visible?",
                "is there retinal bleeding?",
                "does the image show haemorrhages?",
            ),
        ),
        "hard_exudates": _question_type(
            "are there hard exudates?",
            "closed",
            ("are any hard exudates visible?", "can you see hard exudates?", "does the image show exudates?"),
        ),
        "cotton_wool_spots": _question_type(
            "are there cotton wool spots?",
            "closed",
            (
                "are any cotton wool spots visible?",
                "can you see soft exudates?",
                "does the image show cotton wool spots?",
            ),
        ),
        "neovascularisation": _question_type(
            "is there neovascularisation?",
            "closed",
            (
                "are there new vessels?",
                "is neovascularisation visible?",
                "does the image show new vessel growth?",
            ),
        ),
        "haemorrhage_quadrants": _question_type(
            "how many quadrants show haemorrhages?",
            "closed",
            (
                "in how many quadrants are there haemorrhages?",
                "how many retinal quadrants contain haemorrhages?",
                "haemorrhages are present in how many quadrants?",
            ),
        ),
        "quality": _question_type(
            "is the image quality adequate for grading?",
            "closed",
            (
                "is this image gradable?",
                "is the image good enough to grade?",
                "is the photo quality sufficient?",
            ),
        ),
    }
)

# Lesion-presence question type -> lesion types that make its answer "yes".
_PRESENCE_TYPES = {
    "microaneurysms": ("microaneurysm",),
    "haemorrhages": HAEMORRHAGE_TYPES,
    "hard_exudates": ("hard_exudate",),
    "cotton_wool_spots": ("cotton_wool_spot",),
    "neovascularisation": ("neovascularisation",),
}


def all_texts(paraphrase: bool = True) -> list[str]:
    """Every question and answer string the generator can produce (for building a tokeniser vocabulary)."""
    texts: list[str] = []
    for info in QUESTION_TYPES.values():
        texts.extend(info["paraphrases"] if paraphrase else (info["question"],))
    texts.extend(DIAGNOSIS_ANSWERS)
    texts.extend(BLINDNESS_ANSWERS)
    texts.extend(CAUSE_ANSWERS)
    texts.extend(COUNT_WORDS)
    texts.extend((MODALITY_ANSWER, "yes", "no", "left eye", "right eye"))
    return list(dict.fromkeys(texts))


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def fov_geometry(image_size: int) -> tuple[float, float, float]:
    """Centre x, centre y and radius (pixels) of the circular field of view."""
    return image_size / 2.0, image_size / 2.0, FOV_RADIUS_FRACTION * image_size


def haemorrhage_quadrant(x: float, y: float, image_size: int, laterality: str) -> str:
    """Quadrant of a point, split by the vertical and horizontal lines through the image centre.

    Temporal is the side away from the optic disc: the left half of a right eye, the right half of a
    left eye (the disc sits on the right of a right-eye photograph).
    """
    cx, cy, _ = fov_geometry(image_size)
    vertical = "superior" if y < cy else "inferior"
    temporal_is_left = laterality == "right"
    horizontal = "temporal" if (x < cx) == temporal_is_left else "nasal"
    return f"{vertical}-{horizontal}"


def count_haemorrhage_quadrants(lesions: Iterable[Mapping[str, Any]], image_size: int, laterality: str) -> int:
    """Number of quadrants holding the centre of at least one haemorrhage box."""
    quadrants = {
        haemorrhage_quadrant((b["x0"] + b["x1"]) / 2.0, (b["y0"] + b["y1"]) / 2.0, image_size, laterality)
        for b in lesions
        if b["type"] in HAEMORRHAGE_TYPES
    }
    return len(quadrants)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Pixel centres, so that a lesion at (cx, cy) is symmetric about its box.
    return yy + 0.5, xx + 0.5


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in roughly [-1, 1]: random cells upsampled bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _box(x0: float, y0: float, x1: float, y1: float, size: int, kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "x0": int(max(0, math.floor(x0))),
        "y0": int(max(0, math.floor(y0))),
        "x1": int(min(size, math.ceil(x1))),
        "y1": int(min(size, math.ceil(y1))),
    }


def _blob(
    img: np.ndarray,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    colour: Sequence[float],
    alpha: float = 1.0,
    angle: float = 0.0,
    mode: str = "multiply",
    profile: str = "hard",
    flat_top: float | None = None,
    edge: float = 1.0,
) -> None:
    """Paint an elliptical blob in place, touching only its bounding window (speed).

    ``multiply`` tints what is underneath (dark lesions keep the local illumination), ``blend`` paints
    an opaque colour (bright lesions). ``hard`` has an anti-aliased edge one pixel wide, ``gauss`` a soft
    fall-off; ``edge`` widens the hard edge (pixels). ``flat_top`` cuts the ellipse horizontally at
    that fraction of ry above the centre, which gives the boat shape of a preretinal haemorrhage.
    """
    size = img.shape[0]
    reach = max(rx, ry) * (1.6 if profile == "gauss" else 1.0) + 2
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, size)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, size)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    if profile == "gauss":
        a = np.exp(-2.2 * d**2)
    else:
        a = np.clip((1.0 - d) * min(rx, ry) / edge + 0.5, 0.0, 1.0)
    if flat_top is not None:
        a = a * np.clip((v + flat_top * ry) / edge + 0.5, 0.0, 1.0)
    a = (a * alpha)[..., None]
    patch = img[y0:y1, x0:x1]
    col = np.asarray(colour, dtype=np.float32)
    if mode == "multiply":
        patch *= 1.0 - a * (1.0 - col)
    else:
        patch *= 1.0 - a
        patch += a * col


# --------------------------------------------------------------------------------------------------
# Vessels
# --------------------------------------------------------------------------------------------------


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    turn: float,
    wiggle: float,
    step: float,
    turn_until: float = 1.0,
) -> np.ndarray:
    """Polyline with smoothly varying heading: total ``turn`` radians spread over the first
    ``turn_until`` fraction of the length, plus low-frequency wiggle so vessels are not perfect arcs."""
    n = max(int(length / step), 3)
    t = np.arange(n) / n
    bend = np.where(t < turn_until, turn / max(turn_until * n, 1.0), 0.0)
    noise = rng.standard_normal(n + 6) * wiggle
    noise = np.convolve(noise, np.ones(7) / 7.0, mode="valid")[:n]
    headings = heading + np.cumsum(bend + noise)
    steps = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step
    return np.vstack([start[None, :], start[None, :] + np.cumsum(steps, axis=0)])


def _clip_to_fov(pts: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    inside = np.linalg.norm(pts - centre, axis=1) < radius
    if not inside.all():
        first_out = int(np.argmin(inside))
        pts = pts[: max(first_out + 1, 2)]
    return pts


def _draw_tapered(draw: ImageDraw.ImageDraw, pts: np.ndarray, w0: float, w1: float, chunk: int = 5) -> None:
    """Draw a polyline whose width shrinks from w0 to w1, in constant-width chunks with round joins."""
    n = len(pts)
    for i in range(0, n - 1, chunk):
        seg = pts[i : min(i + chunk + 1, n)]
        w = w0 + (w1 - w0) * (i / max(n - 1, 1))
        width = max(int(round(w)), 1)
        draw.line([tuple(p) for p in seg], fill=255, width=width, joint="curve")
        if width > 2:
            r = width / 2.0
            x, y = seg[0]
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


def _vessel_tree(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    pts: np.ndarray,
    w0: float,
    w1: float,
    depth: int,
    fovea: np.ndarray,
    fov: tuple[np.ndarray, float],
    step: float,
) -> None:
    """Draw a vessel and recursively a few thinner branches leaving it at 25-55 degrees.

    Most branches head away from the fovea (the macula is nearly avascular); the rest are short
    twigs towards it.
    """
    _draw_tapered(draw, pts, w0, w1)
    if depth == 0 or len(pts) < 10:
        return
    centre, radius = fov
    n_branches = int(rng.integers(2, 4)) if depth > 1 else int(rng.integers(0, 3))
    for _ in range(n_branches):
        k = int(rng.integers(len(pts) // 6, max(len(pts) * 3 // 4, len(pts) // 6 + 1)))
        if k >= len(pts) - 1:
            continue
        direction = pts[k + 1] - pts[k]
        parent_heading = math.atan2(direction[1], direction[0])
        angle = rng.uniform(0.45, 0.95)
        outward = pts[k] - fovea
        candidates = [parent_heading + angle, parent_heading - angle]
        scores = [math.cos(h) * outward[0] + math.sin(h) * outward[1] for h in candidates]
        towards_fovea = rng.random() < 0.3
        pick = int(np.argmax(scores)) if not towards_fovea else int(np.argmin(scores))
        heading = candidates[pick]
        side = 1.0 if pick == 0 else -1.0
        parent_w = w0 + (w1 - w0) * k / len(pts)
        length = rng.uniform(0.3, 0.6) * radius * (0.5 if depth == 1 else 1.0) * (0.45 if towards_fovea else 1.0)
        # Branches bend back towards their parent's direction, as real ones do.
        branch = _walk(rng, pts[k], heading, length, -side * rng.uniform(0.2, 0.6), 0.05, step)
        branch = _clip_to_fov(branch, centre, radius)
        _vessel_tree(rng, draw, branch, parent_w * 0.65, parent_w * 0.3, depth - 1, fovea, fov, step)


def _draw_vessels(
    rng: np.random.Generator,
    size: int,
    disc: np.ndarray,
    disc_radius: float,
    fovea: np.ndarray,
    nasal_sign: float,
    grade: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Render vein and artery coverage masks (float32, 0-1) at ``size``, drawn supersampled."""
    ss = 3 if size <= 512 else 2
    big = size * ss
    veins = Image.new("L", (big, big), 0)
    arteries = Image.new("L", (big, big), 0)
    dv, da = ImageDraw.Draw(veins), ImageDraw.Draw(arteries)
    centre = np.array([big / 2.0, big / 2.0])
    radius = FOV_RADIUS_FRACTION * big * 1.01
    fov = (centre, radius)
    d = disc * ss
    rd = disc_radius * ss
    fov_big = fovea * ss
    step = big / 90.0
    vein_w = 0.0145 * big
    art_w = 0.0105 * big
    beaded: list[tuple[np.ndarray, float]] = []
    for vertical in (-1.0, 1.0):
        # The main arcades leave the disc almost vertically and curve temporally around the macula,
        # ending slightly divergent rather than meeting at the horizontal raphe.
        for draw, w, offset in ((dv, vein_w, 0.18), (da, art_w, -0.18)):
            start = d + np.array([nasal_sign * offset * rd, vertical * 0.15 * rd])
            heading0 = math.atan2(vertical, -nasal_sign * rng.uniform(0.05, 0.3))
            target = math.atan2(vertical * rng.uniform(0.0, 0.25), -nasal_sign)
            total_turn = (target - heading0 + math.pi) % (2 * math.pi) - math.pi
            length = rng.uniform(1.0, 1.2) * radius
            pts = _walk(rng, start, heading0, length, total_turn, 0.03, step, turn_until=rng.uniform(0.45, 0.65))
            pts = _clip_to_fov(pts, centre, radius)
            _vessel_tree(rng, draw, pts, w, w * 0.4, 2, fov_big, fov, step)
            if draw is dv:
                beaded.append((pts, w))
            # Nasal vessels: shorter, heading up or down and nasally.
            heading_n = math.atan2(vertical, nasal_sign * rng.uniform(0.4, 1.0))
            target_n = math.atan2(vertical * 0.3, nasal_sign)
            turn_n = (target_n - heading_n + math.pi) % (2 * math.pi) - math.pi
            pts = _walk(
                rng,
                start,
                heading_n,
                rng.uniform(0.5, 0.7) * radius,
                turn_n * rng.uniform(0.3, 0.8),
                0.04,
                step,
            )
            pts = _clip_to_fov(pts, centre, radius)
            _vessel_tree(rng, draw, pts, w * 0.7, w * 0.3, 1, fov_big, fov, step)
        # Small macular branches heading for, but stopping short of, the fovea.
        for draw, w in ((dv, vein_w * 0.4), (da, art_w * 0.45)):
            toward = fov_big - d
            heading_m = math.atan2(toward[1], toward[0]) + vertical * rng.uniform(0.25, 0.5)
            pts = _walk(
                rng,
                d,
                heading_m,
                rng.uniform(0.6, 0.8) * float(np.linalg.norm(toward)),
                -vertical * 0.3,
                0.05,
                step,
            )
            _draw_tapered(draw, _clip_to_fov(pts, centre, radius), w, w * 0.4)
    if grade >= 3:
        # Venous beading: a string of bulges along part of one or both main veins.
        for pts, w in beaded[: int(rng.integers(1, 3))]:
            n = len(pts)
            k0 = int(n * rng.uniform(0.3, 0.45))
            k1 = min(n - 1, k0 + int(n * rng.uniform(0.15, 0.25)))
            spacing = max(int(2.2 * w / step), 1)
            for k in range(k0, k1, spacing):
                r = 0.5 * w * 1.45
                x, y = pts[k]
                dv.ellipse((x - r, y - r, x + r, y + r), fill=255)
    out = []
    for mask in (veins, arteries):
        small = mask.resize((size, size), Image.Resampling.BOX)
        out.append(np.asarray(small, dtype=np.float32) / 255.0)
    return out[0], out[1]


def _draw_tuft(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> tuple[np.ndarray, dict]:
    """Neovascular tuft: many fine, tortuous, looping vessels inside a small disc. Returns a coverage
    mask and the tuft's bounding box."""
    ss = 3
    big = size * ss
    # Draw only the tuft's window: a full-size canvas per tuft would waste time.
    half = int(math.ceil(radius * ss)) + 4
    canvas = Image.new("L", (2 * half, 2 * half), 0)
    draw = ImageDraw.Draw(canvas)
    local_c = np.array([half, half], dtype=np.float64)
    width = max(int(round(0.006 * big)), 2)
    all_pts = []
    for _ in range(int(rng.integers(12, 20))):
        # A fan of wiggly fronds from a common root, most of them looping back on themselves.
        start = local_c + rng.normal(0, 0.15 * radius * ss, 2)
        pts = _walk(
            rng,
            start,
            rng.uniform(0, 2 * math.pi),
            rng.uniform(0.9, 1.6) * radius * ss,
            rng.uniform(-2.5, 2.5),
            0.6,
            radius * ss / 14,
        )
        # Fold the walk back inside the tuft radius so the lesion stays compact.
        off = pts - local_c
        dist = np.linalg.norm(off, axis=1, keepdims=True)
        limit = radius * ss * 0.95
        pts = local_c + off * np.minimum(1.0, limit / np.maximum(dist, 1e-6))
        draw.line([tuple(p) for p in pts], fill=255, width=width, joint="curve")
        all_pts.append(pts)
    pts = np.vstack(all_pts)
    mask = np.zeros((size, size), dtype=np.float32)
    small = np.asarray(canvas.resize((2 * half // ss, 2 * half // ss), Image.Resampling.BOX), np.float32) / 255
    ox, oy = int(round(centre[0] - half / ss)), int(round(centre[1] - half / ss))
    h, w = small.shape
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    dx1, dy1 = min(size, ox + w), min(size, oy + h)
    if dx1 > dx0 and dy1 > dy0:
        mask[dy0:dy1, dx0:dx1] = small[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    lo = pts.min(axis=0) / ss + np.array([ox, oy]) - width / ss
    hi = pts.max(axis=0) / ss + np.array([ox, oy]) + width / ss
    return mask, _box(lo[0], lo[1], hi[0], hi[1], size, "neovascularisation")


# --------------------------------------------------------------------------------------------------
# Fundus rendering
# --------------------------------------------------------------------------------------------------


def _sample_point(
    rng: np.random.Generator,
    size: int,
    extent: float,
    around: np.ndarray,
    r_min: float,
    r_max: float,
    avoid: np.ndarray,
    avoid_radius: float,
    quadrant: tuple[float, float] | None = None,
) -> np.ndarray:
    """A point at distance [r_min, r_max] from ``around`` whose ``extent``-sized box stays in the field of
    view and off the optic disc; optionally inside one image quadrant given as (x sign, y sign)."""
    cx, cy, fov_r = fov_geometry(size)
    centre = np.array([cx, cy])
    # Box corners lie at most extent*sqrt(2) from the centre; keep them inside the circle.
    limit = fov_r - extent * 1.5 - 2.0
    margin = 0.04 * size + extent
    for _ in range(200):
        ang = rng.uniform(0, 2 * math.pi)
        p = around + rng.uniform(r_min, r_max) * np.array([math.cos(ang), math.sin(ang)])
        if quadrant is not None:
            p = centre + np.abs(p - centre) * np.array(quadrant)
            if abs(p[0] - cx) < margin or abs(p[1] - cy) < margin:
                continue
        if np.linalg.norm(p - centre) > limit or np.linalg.norm(p - avoid) < avoid_radius + extent:
            continue
        return p
    # Fall back to a safe spot: mid-radius on the quadrant diagonal or next to the fovea.
    if quadrant is not None:
        return centre + np.array(quadrant) * (0.45 * limit / math.sqrt(2) + margin)
    return around.copy()


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
    if grade not in range(5):
        raise ValueError(f"grade must be 0-4, got {grade}")
    if laterality not in LATERALITIES:
        raise ValueError(f"laterality must be one of {LATERALITIES}, got {laterality!r}")
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    size = int(image_size)
    yy, xx = _grid(size)
    cx, cy, fov_r = fov_geometry(size)
    nasal_sign = 1.0 if laterality == "right" else -1.0

    # Anatomy: fovea near the centre, disc 2.5 disc diameters nasal and slightly above it.
    disc_d = 0.105 * size * rng.uniform(0.9, 1.1)
    disc_r = disc_d / 2.0
    fovea = np.array([cx - nasal_sign * 0.03 * size, cy + 0.01 * size]) + rng.normal(0, 0.012 * size, 2)
    disc = fovea + np.array([nasal_sign * 2.5 * disc_d, -0.25 * disc_d]) + rng.normal(0, 0.008 * size, 2)

    # Background: orange-red with per-image hue, mottled choroidal texture.
    base = np.array([rng.uniform(0.80, 0.95), rng.uniform(0.30, 0.42), rng.uniform(0.10, 0.20)], dtype=np.float32)
    texture = 1.0 + 0.05 * _smooth_noise(rng, size, 10) + 0.025 * _smooth_noise(rng, size, 40)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = base
    img *= texture[..., None]
    # Choroidal colour varies: slightly more orange in places, more red in others.
    img[..., 1] *= 1.0 + 0.08 * _smooth_noise(rng, size, 6)

    # Macula: a broad darker zone with a small dark fovea and a pin-point light reflex.
    r2 = ((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (0.95 * disc_d) ** 2
    img *= (1.0 - 0.32 * np.exp(-r2))[..., None] * np.array([1.0, 0.9, 0.95], np.float32)
    _blob(img, fovea[0], fovea[1], 0.16 * disc_d, 0.16 * disc_d, (0.7, 0.6, 0.65), 0.8, profile="gauss")
    _blob(img, fovea[0], fovea[1], 0.025 * size, 0.025 * size, (1.0, 0.9, 0.8), 0.0)
    reflex = max(0.004 * size, 0.8)
    _blob(img, fovea[0], fovea[1], reflex, reflex, (1.0, 0.85, 0.6), 0.6, mode="blend", profile="gauss")

    # Optic disc: pale yellow-orange with a soft halo, a pinker rim and a whiter cup offset temporally.
    _blob(
        img,
        disc[0],
        disc[1],
        disc_r * 1.35,
        disc_r * 1.45,
        (1.0, 0.75, 0.55),
        0.35,
        mode="blend",
        profile="gauss",
    )
    disc_col = (rng.uniform(0.93, 1.0), rng.uniform(0.7, 0.8), rng.uniform(0.42, 0.55))
    _blob(img, disc[0], disc[1], disc_r, disc_r * 1.08, disc_col, 0.92, mode="blend")
    cup_r = disc_r * rng.uniform(0.3, 0.5)
    cup = disc - np.array([nasal_sign * 0.2 * disc_r, 0.0])
    _blob(img, cup[0], cup[1], cup_r, cup_r * 1.1, (1.0, 0.93, 0.78), 0.85, mode="blend", profile="gauss")

    # Vessels: veins darker and wider than arteries, both tinting what is underneath.
    veins, arteries = _draw_vessels(rng, size, disc, disc_r, fovea, nasal_sign, grade)
    img *= 1.0 - veins[..., None] * (1.0 - np.array([0.55, 0.22, 0.3], np.float32))
    img *= 1.0 - arteries[..., None] * (1.0 - np.array([0.88, 0.5, 0.55], np.float32))

    lesions = _add_lesions(rng, img, size, grade, fovea, disc, disc_r)

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
    return out, lesions


def _apply_quality(rng: np.random.Generator, img: np.ndarray, size: int, quality: str) -> np.ndarray:
    if quality == "underexposed":
        img = np.clip(img, 0.0, None) ** 1.25 * rng.uniform(0.32, 0.45)
    elif quality == "overexposed":
        grey = img.mean(axis=2, keepdims=True)
        img = (0.55 * img + 0.45 * grey) * rng.uniform(1.7, 2.1) + 0.12
    return img


def _add_lesions(
    rng: np.random.Generator,
    img: np.ndarray,
    size: int,
    grade: int,
    fovea: np.ndarray,
    disc: np.ndarray,
    disc_r: float,
) -> list[dict[str, Any]]:
    """Paint ICDR-grade lesions into ``img`` in place and return their boxes."""
    lesions: list[dict[str, Any]] = []
    if grade == 0:
        return lesions
    s = float(size)
    avoid_r = disc_r * 1.3

    # Microaneurysms: small sharp dark-red dots around the posterior pole. Drawn larger and darker than life
    # (about 2 px at 128 px) so that grade 1 stays distinguishable from grade 0 after resizing to 128 px.
    for _ in range(int(rng.integers(6, 21) if grade == 1 else rng.integers(8, 26))):
        r = rng.uniform(0.012, 0.016) * s
        p = _sample_point(rng, size, r, fovea, 0.04 * s, 0.34 * s, disc, avoid_r)
        _blob(img, p[0], p[1], r, r, (0.40, 0.09, 0.11), 1.0, edge=0.2 * r + 0.6)
        lesions.append(_box(p[0] - r, p[1] - r, p[0] + r, p[1] + r, size, "microaneurysm"))
    if grade == 1:
        return lesions

    # Dot/blot (and at grade >= 3 some flame) haemorrhages, placed per image quadrant.
    quadrant_signs = [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)]
    if grade == 2:
        chosen = rng.permutation(4)[: int(rng.integers(1, 4))]
        per_quadrant = (2, 6)
        r_range = (0.012, 0.024)
    else:
        chosen = np.arange(4)
        per_quadrant = (5, 10)
        r_range = (0.013, 0.03)
    centre = np.array([s / 2, s / 2])
    for q in chosen:
        for _ in range(int(rng.integers(*per_quadrant))):
            r = rng.uniform(*r_range) * s
            flame = grade >= 3 and rng.random() < 0.3
            rx, ry = (r * 1.8, r * 0.6) if flame else (r, r * rng.uniform(0.75, 1.0))
            p = _sample_point(
                rng, size, max(rx, ry) * 1.3, centre, 0.08 * s, 0.42 * s, disc, avoid_r, quadrant_signs[q]
            )
            angle = math.atan2(p[1] - disc[1], p[0] - disc[0]) if flame else rng.uniform(0, math.pi)
            colour = (rng.uniform(0.55, 0.68), rng.uniform(0.2, 0.3), 0.3)
            if flame:
                # Flame haemorrhages are feathered streaks along the nerve fibres.
                _blob(img, p[0], p[1], rx, ry, colour, 0.95, angle=angle, profile="gauss")
            else:
                _blob(img, p[0], p[1], rx, ry, colour, 0.92, angle=angle, edge=0.3 * r + 0.6)
            ext = max(rx, ry)
            # Blots are irregular: a couple of overlapping lobes.
            if not flame:
                for _ in range(int(rng.integers(0, 3))):
                    lobe = p + rng.normal(0, 0.35 * r, 2)
                    lr = r * rng.uniform(0.5, 0.8)
                    _blob(img, lobe[0], lobe[1], lr, lr, colour, 0.7, edge=0.3 * lr + 0.6)
                    ext = max(ext, float(np.abs(lobe - p).max()) + lr)
            ext = min(ext, max(rx, ry) * 1.3)
            lesions.append(_box(p[0] - ext, p[1] - ext, p[0] + ext, p[1] + ext, size, "haemorrhage"))

    # Hard exudates: bright yellow waxy dots in clusters (sometimes a circinate ring).
    if rng.random() < (0.8 if grade == 2 else 0.9):
        for _ in range(int(rng.integers(1, 4) if grade == 2 else rng.integers(2, 6))):
            rc = rng.uniform(0.025, 0.05) * s
            c = _sample_point(rng, size, rc * 1.3, fovea, 0.06 * s, 0.3 * s, disc, avoid_r)
            ring = rng.random() < 0.35
            xs, ys = [], []
            for _ in range(int(rng.integers(8, 24))):
                rr = rng.uniform(0.0045, 0.009) * s
                if ring:
                    ang = rng.uniform(0, 2 * math.pi)
                    off = rc * rng.uniform(0.75, 1.0) * np.array([math.cos(ang), math.sin(ang)])
                else:
                    off = np.clip(rng.normal(0, 0.45 * rc, 2), -rc, rc)
                p = c + off
                col = (1.0, rng.uniform(0.86, 0.95), rng.uniform(0.42, 0.6))
                _blob(
                    img,
                    p[0],
                    p[1],
                    rr,
                    rr * rng.uniform(0.7, 1.0),
                    col,
                    0.92,
                    angle=rng.uniform(0, 3),
                    mode="blend",
                    edge=0.3 * rr + 0.5,
                )
                xs += [p[0] - rr, p[0] + rr]
                ys += [p[1] - rr, p[1] + rr]
            lesions.append(_box(min(xs), min(ys), max(xs), max(ys), size, "hard_exudate"))

    # Cotton-wool spots: fluffy pale patches near the arcades.
    p_cws = {2: 0.45, 3: 0.75, 4: 0.6}[grade]
    if rng.random() < p_cws:
        for _ in range(int(rng.integers(1, 3) if grade == 2 else rng.integers(1, 5))):
            r = rng.uniform(0.028, 0.042) * s
            p = _sample_point(rng, size, r * 1.6, fovea, 0.15 * s, 0.32 * s, disc, avoid_r)
            angle = rng.uniform(0, math.pi)
            col = (0.97, rng.uniform(0.88, 0.93), rng.uniform(0.8, 0.86))
            _blob(img, p[0], p[1], r, r * 0.7, col, 0.85, angle=angle, mode="blend", profile="gauss")
            # Fluffy outline: a few overlapping soft lobes.
            for _ in range(3):
                q = p + rng.normal(0, 0.3 * r, 2)
                _blob(
                    img,
                    q[0],
                    q[1],
                    r * 0.55,
                    r * 0.45,
                    col,
                    0.7,
                    angle=rng.uniform(0, 3),
                    mode="blend",
                    profile="gauss",
                )
            ext = r * 1.25
            lesions.append(_box(p[0] - ext, p[1] - ext, p[0] + ext, p[1] + ext, size, "cotton_wool_spot"))

    if grade < 4:
        return lesions

    # Proliferative disease: new-vessel tufts at the disc or elsewhere, and/or a preretinal haemorrhage.
    has_nv = rng.random() < 0.85
    has_prh = rng.random() < 0.5 or not has_nv
    if has_nv:
        sites = []
        if rng.random() < 0.55:
            sites.append(disc + rng.normal(0, 0.3 * disc_r, 2))
        if not sites or rng.random() < 0.4:
            sites.append(_sample_point(rng, size, 0.075 * s * 1.2, fovea, 0.2 * s, 0.32 * s, disc, avoid_r))
        nv_mask = np.zeros((size, size), dtype=np.float32)
        for site in sites:
            r = rng.uniform(0.055, 0.08) * s
            mask, box = _draw_tuft(rng, size, site, r)
            nv_mask = np.maximum(nv_mask, mask)
            lesions.append(box)
        img *= 1.0 - nv_mask[..., None] * (1.0 - np.array([0.75, 0.22, 0.25], np.float32))
    if has_prh:
        rx = rng.uniform(0.06, 0.095) * s
        ry = rx * rng.uniform(0.6, 0.85)
        p = _sample_point(rng, size, rx * 1.05, fovea, 0.15 * s, 0.3 * s, disc, avoid_r)
        _blob(img, p[0], p[1], rx, ry, (0.5, 0.14, 0.18), 0.97, flat_top=0.45, edge=0.06 * rx + 0.6)
        # Blood settles: the lower part of the boat is darker.
        _blob(img, p[0], p[1] + 0.35 * ry, rx * 0.8, ry * 0.5, (0.75, 0.6, 0.65), 0.8, profile="gauss")
        # An uneven lower border, so the boat is not a perfect half ellipse.
        for _ in range(3):
            q = p + np.array([rng.uniform(-0.6, 0.6) * rx, rng.uniform(0.1, 0.4) * ry])
            _blob(img, q[0], q[1], rx * 0.35, ry * 0.55, (0.55, 0.18, 0.2), 0.8, profile="gauss")
        lesions.append(_box(p[0] - rx, p[1] - 0.45 * ry, p[0] + rx, p[1] + ry, size, "preretinal_haemorrhage"))
    return lesions


# --------------------------------------------------------------------------------------------------
# Questions and answers
# --------------------------------------------------------------------------------------------------


def answer_for(
    question_type: str, grade: int, laterality: str, quality: str, lesions: Sequence[Mapping], image_size: int
) -> str:
    """The answer to ``question_type`` for an image with this metadata."""
    if question_type == "modality":
        return MODALITY_ANSWER
    if question_type == "abnormality":
        return "yes" if grade > 0 else "no"
    if question_type == "diagnosis":
        return DIAGNOSIS_ANSWERS[grade]
    if question_type == "blindness":
        return BLINDNESS_ANSWERS[grade]
    if question_type == "cause":
        return CAUSE_ANSWERS[grade]
    if question_type == "laterality":
        return f"{laterality} eye"
    if question_type in _PRESENCE_TYPES:
        kinds = _PRESENCE_TYPES[question_type]
        return "yes" if any(b["type"] in kinds for b in lesions) else "no"
    if question_type == "haemorrhage_quadrants":
        return COUNT_WORDS[count_haemorrhage_quadrants(lesions, image_size, laterality)]
    if question_type == "quality":
        return "yes" if quality == "good" else "no"
    raise ValueError(f"unknown question type {question_type!r}; expected one of {list(QUESTION_TYPES)}")


# --------------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------------


def _image_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # Keyed by (seed, split, index) so an image does not depend on which worker draws it or on the
    # other splits' sizes; separate streams keep paraphrase choice from changing the pixels.
    split_key = {"train": 0, "validation": 1, "test": 2, "preview": 3}[split]
    return np.random.default_rng([seed, split_key, index, stream])


def _draw_quality(rng: np.random.Generator, defect_rate: float) -> str:
    if rng.random() < defect_rate:
        return str(rng.choice(QUALITIES[1:]))
    return "good"


def _render_example(task: tuple[int, str, int, int, int, float]) -> dict[str, Any]:
    seed, split, index, grade, image_size, defect_rate = task
    rng = _image_rng(seed, split, index, 0)
    laterality = LATERALITIES[int(rng.integers(0, 2))]
    quality = _draw_quality(rng, defect_rate)
    image, lesions = render_fundus(rng, image_size, grade, laterality, quality)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return {
        "png": buf.getvalue(),
        "image_id": f"{split}-{index:05d}",
        "grade": grade,
        "laterality": laterality,
        "quality": quality,
        "lesions": lesions,
    }


def _split_grades(n: int, weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """Grades for ``n`` images, matching ``weights`` as closely as whole numbers allow, in random order."""
    w = np.asarray(weights, dtype=np.float64)
    quota = w / w.sum() * n
    counts = np.floor(quota).astype(int)
    # Largest remainder, so balanced weights give per-grade counts that differ by at most one.
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    grades = np.repeat(np.arange(5), counts)
    return [int(g) for g in rng.permutation(grades)]


def validate_grade_weights(grade_weights: Sequence[float] | str | None) -> tuple[float, ...]:
    """Parse and check ``--grade_weights``: five non-negative numbers, not all zero."""
    if grade_weights is None:
        return (1.0,) * 5
    if isinstance(grade_weights, str):
        try:
            values = tuple(float(v) for v in grade_weights.split(","))
        except ValueError:
            raise ValueError(
                f"--grade_weights must be five comma-separated numbers such as 1,1,1,1,1; got {grade_weights!r}"
            ) from None
    else:
        values = tuple(float(v) for v in grade_weights)
    if len(values) != 5:
        raise ValueError(f"--grade_weights needs exactly 5 numbers (one per grade 0-4), got {len(values)}")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--grade_weights must be non-negative finite numbers, got {values}")
    if sum(values) == 0:
        raise ValueError("--grade_weights must not all be zero; use e.g. 1,1,1,1,1 for balanced grades")
    return values


def _validate_args(
    counts: Mapping[str, int],
    image_size: int,
    quality_defect_rate: float,
    question_types: Sequence[str] | None,
) -> None:
    for name, n in counts.items():
        if int(n) != n or n < 0:
            raise ValueError(f"--{name} must be a non-negative integer, got {n}")
    if sum(counts.values()) == 0:
        raise ValueError("all image counts are zero; set --num_train_images (and the others) to at least 1")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if not 0.0 <= quality_defect_rate <= 1.0:
        raise ValueError(f"--quality_defect_rate must be between 0 and 1, got {quality_defect_rate}")
    if question_types is not None:
        unknown = [q for q in question_types if q not in QUESTION_TYPES]
        if unknown or not question_types:
            raise ValueError(
                f"--question_types has unknown or no types {unknown}; choose from {', '.join(QUESTION_TYPES)}"
            )


def dataset_features() -> datasets.Features:
    """The explicit column types of every split."""
    # Imported here: rendering workers only need numpy and Pillow.
    import datasets

    box = {
        "type": datasets.Value("string"),
        "x0": datasets.Value("int32"),
        "y0": datasets.Value("int32"),
        "x1": datasets.Value("int32"),
        "y1": datasets.Value("int32"),
    }
    return datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answer_type": datasets.Value("string"),
            "grade": datasets.Value("int32"),
            "laterality": datasets.Value("string"),
            "quality": datasets.Value("string"),
            "lesions": datasets.List(box),
        }
    )


def _rows_for(
    example: Mapping[str, Any],
    question_types: Sequence[str],
    paraphrase: bool,
    seed: int,
    split: str,
    index: int,
    image_size: int,
) -> dict[str, list]:
    rng = _image_rng(seed, split, index, 1)
    rows: dict[str, list] = collections.defaultdict(list)
    for qt in question_types:
        info = QUESTION_TYPES[qt]
        options = info["paraphrases"]
        question = options[int(rng.integers(0, len(options)))] if paraphrase else info["question"]
        rows["question"].append(question)
        rows["answer"].append(
            answer_for(
                qt,
                example["grade"],
                example["laterality"],
                example["quality"],
                example["lesions"],
                image_size,
            )
        )
        rows["image_id"].append(example["image_id"])
        rows["question_type"].append(qt)
        rows["answer_type"].append(info["answer_type"])
        rows["grade"].append(example["grade"])
        rows["laterality"].append(example["laterality"])
        rows["quality"].append(example["quality"])
        rows["lesions"].append(example["lesions"])
    return rows


def _default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def generate_dataset(
    num_train_images: int,
    num_validation_images: int,
    num_test_images: int,
    image_size: int = 384,
    seed: int = 0,
    grade_weights: Sequence[float] | None = None,
    paraphrase: bool = False,
    quality_defect_rate: float = 0.1,
    question_types: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> datasets.DatasetDict:
    """Generate train/validation/test splits with one row per (image, question type).

    Images are split-disjoint; every image and every paraphrase choice is determined by
    (seed, split, image index) alone, so the same arguments always give the same dataset.
    """
    import datasets

    counts = {
        "num_train_images": num_train_images,
        "num_validation_images": num_validation_images,
        "num_test_images": num_test_images,
    }
    _validate_args(counts, image_size, quality_defect_rate, question_types)
    weights = validate_grade_weights(grade_weights)
    qtypes = list(question_types) if question_types is not None else list(QUESTION_TYPES)
    workers = _default_workers() if num_workers is None else max(1, int(num_workers))
    features = dataset_features()

    tasks: dict[str, list[tuple]] = {}
    for split, n in zip(SPLITS, counts.values(), strict=True):
        grades = _split_grades(int(n), weights, np.random.default_rng([seed, SPLITS.index(split), 2**31]))
        tasks[split] = [(seed, split, i, g, image_size, quality_defect_rate) for i, g in enumerate(grades)]
    flat = [t for split in SPLITS for t in tasks[split]]
    logger.info("Rendering %d images at %d px with %d worker(s)", len(flat), image_size, workers)
    if workers > 1 and len(flat) > 8:
        # fork is cheap and the workers need nothing but numpy and Pillow; results come back in order.
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(workers) as pool:
            rendered = pool.map(_render_example, flat, chunksize=8)
    else:
        rendered = [_render_example(t) for t in flat]

    params = [
        seed,
        image_size,
        weights,
        paraphrase,
        quality_defect_rate,
        qtypes,
        dict(counts),
        _GENERATOR_VERSION,
    ]
    splits = {}
    offset = 0
    for split in SPLITS:
        examples = rendered[offset : offset + len(tasks[split])]
        offset += len(tasks[split])
        fingerprint = hashlib.sha256(json.dumps([*params, split]).encode()).hexdigest()[:16]
        splits[split] = _build_split(examples, qtypes, paraphrase, seed, split, image_size, features, fingerprint)
    return datasets.DatasetDict(splits)


def _build_split(
    examples: Sequence[Mapping[str, Any]],
    qtypes: Sequence[str],
    paraphrase: bool,
    seed: int,
    split: str,
    image_size: int,
    features: datasets.Features,
    fingerprint: str,
) -> datasets.Dataset:
    """Assemble one split straight in Arrow.

    Every image is repeated once per question type; building the rows through ``Dataset.from_dict``
    would copy and hash each PNG that many times in Python, which dominated the run time.
    """
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    schema = features.arrow_schema
    columns: dict[str, list] = collections.defaultdict(list)
    for i, example in enumerate(examples):
        for key, values in _rows_for(example, qtypes, paraphrase, seed, split, i, image_size).items():
            columns[key].extend(values)
    unique_images = pa.StructArray.from_arrays(
        [pa.array([e["png"] for e in examples], pa.binary()), pa.nulls(len(examples), pa.string())],
        fields=list(schema.field("image").type),
    )
    take = pa.array(np.repeat(np.arange(len(examples), dtype=np.int64), len(qtypes)))
    arrays = []
    for field in schema:
        if field.name == "image":
            arrays.append(unique_images.take(take))
        else:
            arrays.append(pa.array(columns.get(field.name, []), type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    return datasets.Dataset(
        InMemoryTable(table),
        info=datasets.DatasetInfo(features=features),
        split=datasets.NamedSplit(split),
        fingerprint=fingerprint,
    )


# --------------------------------------------------------------------------------------------------
# Saving and dataset card
# --------------------------------------------------------------------------------------------------


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; pass a directory path")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace it "
                "or choose another directory"
            )
        resolved = output_dir.resolve()
        protected = {
            Path("/").resolve(),
            Path.home().resolve(),
            Path.cwd().resolve(),
            *Path.cwd().resolve().parents,
        }
        if resolved in protected:
            raise ValueError(f"--output_dir {output_dir} is the working, home or root directory; refusing to delete it")


def save_dataset(
    dataset_dict: datasets.DatasetDict,
    output_dir: str | os.PathLike,
    format: str = "save_to_disk",
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Write ``dataset_dict`` to ``output_dir`` as ``save_to_disk`` or ``imagefolder``, plus README.md."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(output_dir)
    _check_output_dir(out, overwrite)
    if out.is_dir():
        shutil.rmtree(out)
    if format == "save_to_disk":
        # An empty split would otherwise be written with zero shards, which load_from_disk cannot read.
        empty = {split: 1 for split, ds in dataset_dict.items() if ds.num_rows == 0}
        dataset_dict.save_to_disk(str(out), num_shards=empty or None)
    else:
        _save_imagefolder(dataset_dict, out)
    write_dataset_card(dataset_dict, out, format, command)
    logger.info("Wrote %s dataset to %s", format, out)
    return out


def _save_imagefolder(dataset_dict: datasets.DatasetDict, out: Path) -> None:
    import datasets

    for split, ds in dataset_dict.items():
        if ds.num_rows == 0:
            # An empty split folder would make the imagefolder loader fail; leave it out.
            logger.warning("Split %s is empty; not writing it in imagefolder format", split)
            continue
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        raw = ds.cast_column("image", datasets.Image(decode=False))
        meta_columns = [c for c in ds.column_names if c != "image"]
        written: set[str] = set()
        with open(split_dir / "metadata.jsonl", "w", encoding="utf-8") as f:
            for row in raw:
                file_name = f"{row['image_id']}.png"
                if row["image_id"] not in written:
                    # One file per image, shared by all of its question rows.
                    (split_dir / file_name).write_bytes(row["image"]["bytes"])
                    written.add(row["image_id"])
                record = {"file_name": file_name, **{c: row[c] for c in meta_columns}}
                f.write(json.dumps(record) + "\n")


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_dataset_card(
    dataset_dict: datasets.DatasetDict,
    output_dir: str | os.PathLike,
    format: str = "save_to_disk",
    command: str | None = None,
) -> Path:
    """Write README.md with per-split counts of images, rows, question types, answers and grades."""
    splits = list(dataset_dict)
    meta = {
        s: dataset_dict[s].select_columns(["image_id", "question_type", "answer", "grade", "quality"]).to_dict()
        for s in splits
    }

    def per_split(key: str, by_image: bool = False) -> dict[str, collections.Counter]:
        result = {}
        for s in splits:
            if by_image:
                seen = dict(zip(meta[s]["image_id"], meta[s][key], strict=True))
                result[s] = collections.Counter(seen.values())
            else:
                result[s] = collections.Counter(meta[s][key])
        return result

    def table(counters: dict[str, collections.Counter], keys: Iterable, label: str, fmt=str) -> str:
        return _markdown_table([label, *splits], [[fmt(k), *(counters[s].get(k, 0) for s in splits)] for k in keys])

    images = {s: len(set(meta[s]["image_id"])) for s in splits}
    qt_counts = per_split("question_type")
    grade_counts = per_split("grade", by_image=True)
    quality_counts = per_split("quality", by_image=True)
    answer_counts: dict[str, collections.Counter] = {}
    pairs: list[tuple[str, str]] = []
    for s in splits:
        answer_counts[s] = collections.Counter(zip(meta[s]["question_type"], meta[s]["answer"], strict=True))
        pairs.extend(answer_counts[s])
    pairs = sorted(
        dict.fromkeys(pairs),
        key=lambda p: (list(QUESTION_TYPES).index(p[0]) if p[0] in QUESTION_TYPES else 99, p[1]),
    )
    answer_table = _markdown_table(
        ["question type", "answer", *splits],
        [[qt, _short(a), *(answer_counts[s].get((qt, a), 0) for s in splits)] for qt, a in pairs],
    )
    load = (
        f'datasets.load_from_disk("{output_dir}")'
        if format == "save_to_disk"
        else f'datasets.load_dataset("imagefolder", data_dir="{output_dir}")'
    )
    card = f"""# retinavqa-synthetic

Synthetic colour fundus photographs with diabetic retinopathy lesions (ICDR grades 0-4) and
question/answer pairs, in the same format as the private retinal VQA dataset. No patient data: every
image is drawn procedurally.

Produced by:

```
{command or "retina_vqa.synthetic.generate_dataset(...) from Python"}
```

Load with `{load}`.

Each image gives one row per question type. Columns: `image`, `question`, `answer`, `image_id`,
`question_type`, `answer_type` (closed/open), `grade` (0-4), `laterality`, `quality`, `lesions`
(boxes with `type`, `x0`, `y0`, `x1`, `y1` in pixels). Haemorrhage quadrants are split by the
vertical and horizontal lines through the image centre.

## Size

{_markdown_table(["split", "images", "rows"], [[s, images[s], dataset_dict[s].num_rows] for s in splits])}

## Images per grade

{table(grade_counts, range(5), "grade", lambda g: f"{g} ({DIAGNOSIS_ANSWERS[g]})")}

## Images per quality

{table(quality_counts, QUALITIES, "quality")}

## Rows per question type

{table(qt_counts, [q for q in QUESTION_TYPES if any(qt_counts[s].get(q) for s in splits)], "question type")}

## Rows per answer

{answer_table}
"""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------


def preview_label_height(image_size: int) -> int:
    """Height of the caption strip under each preview tile."""
    return max(14, image_size // 14)


def render_preview(image_size: int = 384, seed: int = 0, quality_defect_rate: float = 0.1) -> Image.Image:
    """A 4x4 grid of samples cycling through the grades, each captioned with grade, eye and quality."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    label_h = preview_label_height(image_size)
    n = PREVIEW_GRID
    grid = Image.new("RGB", (n * image_size, n * (image_size + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(9, label_h - 4))
    for i in range(n * n):
        grade = i % 5
        ex = _render_example((seed, "preview", i, grade, image_size, quality_defect_rate))
        tile = Image.open(io.BytesIO(ex["png"]))
        x, y = (i % n) * image_size, (i // n) * (image_size + label_h)
        grid.paste(tile, (x, y))
        eye = "OD" if ex["laterality"] == "right" else "OS"
        text = f"{grade} {DIAGNOSIS_ANSWERS[grade]} {eye}"
        if ex["quality"] != "good":
            text += f" {ex['quality']}"
        if draw.textlength(text, font=font) > image_size - 4:
            # Small tiles: drop the diagnosis words, keep grade, eye and the defect.
            text = f"g{grade} {eye} {ex['quality'] if ex['quality'] != 'good' else ''}".strip()
        draw.text((x + 3, y + image_size + 1), text, fill=(0, 0, 0), font=font)
    return grid


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m retina_vqa.synthetic",
        description="Generate a synthetic retinal fundus VQA dataset, or a preview grid of its images.",
    )
    p.add_argument("--output_dir", help="where to write the dataset (required unless --preview)")
    p.add_argument("--preview", metavar="PNG", help="write a 4x4 grid of samples to this PNG and exit")
    p.add_argument("--num_train_images", type=int, default=600)
    p.add_argument("--num_validation_images", type=int, default=100)
    p.add_argument("--num_test_images", type=int, default=100)
    p.add_argument("--image_size", type=int, default=384, help="side of the square images in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="save_to_disk", help="save_to_disk (default) or imagefolder")
    p.add_argument("--grade_weights", default="1,1,1,1,1", help="relative frequency of ICDR grades 0-4")
    p.add_argument("--paraphrase", action="store_true", help="vary the question wording per row")
    p.add_argument(
        "--quality_defect_rate",
        type=float,
        default=0.1,
        help="fraction of images blurred, under- or overexposed",
    )
    p.add_argument(
        "--question_types",
        default=None,
        help=f"comma-separated subset of question types (default all: {','.join(QUESTION_TYPES)})",
    )
    p.add_argument("--num_workers", type=int, default=None, help="rendering processes (default up to 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return p


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    try:
        if args.preview:
            grid = render_preview(args.image_size, args.seed, args.quality_defect_rate)
            Path(args.preview).parent.mkdir(parents=True, exist_ok=True)
            grid.save(args.preview)
            print(f"wrote preview {args.preview} ({grid.width}x{grid.height})")
            return
        if not args.output_dir:
            parser.error("--output_dir is required (or use --preview FILE.png)")
        if args.format not in FORMATS:
            parser.error(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
        question_types = args.question_types.split(",") if args.question_types else None
        _check_output_dir(Path(args.output_dir), args.overwrite)
        dd = generate_dataset(
            args.num_train_images,
            args.num_validation_images,
            args.num_test_images,
            image_size=args.image_size,
            seed=args.seed,
            grade_weights=validate_grade_weights(args.grade_weights),
            paraphrase=args.paraphrase,
            quality_defect_rate=args.quality_defect_rate,
            question_types=question_types,
            num_workers=args.num_workers,
        )
        command = "python -m retina_vqa.synthetic " + shlex.join(argv_used)
        save_dataset(dd, args.output_dir, args.format, overwrite=args.overwrite, command=command)
    except ValueError as err:
        parser.error(str(err))
    summary = ", ".join(f"{s}: {dd[s].num_rows} rows" for s in dd)
    print(f"wrote {args.output_dir} ({summary})")


if __name__ == "__main__":
    main()
