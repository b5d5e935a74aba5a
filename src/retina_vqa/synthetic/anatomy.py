"""Healthy fundus anatomy and the drawing primitives every sign is painted with.

This module owns the geometry (the circular field of view, pixel grids, lesion boxes, point sampling inside the
field of view and off the disc), the painting primitives (``blob``, band-limited noise, polylines), the vessel
tree, and ``draw_anatomy``: background, macula and optic disc of one eye. What it draws carries no disease;
diabetic lesions live in :mod:`.lesions`, the other conditions' signs in :mod:`.signs`, and :mod:`.render`
puts them together.

Every random draw comes from the generator passed in, in a fixed order: reordering draws, or adding one,
changes every image of a seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "FOV_RADIUS_FRACTION",
    "Anatomy",
    "blob",
    "clip_to_fov",
    "draw_anatomy",
    "draw_tapered",
    "draw_vessels",
    "fov_geometry",
    "lesion_box",
    "pixel_grid",
    "sample_point",
    "smooth_noise",
    "walk",
]

# Field-of-view radius as a fraction of the image side; the circle is centred in the image.
FOV_RADIUS_FRACTION = 0.47

# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def fov_geometry(image_size: int) -> tuple[float, float, float]:
    """Centre x, centre y and radius (pixels) of the circular field of view."""
    return image_size / 2.0, image_size / 2.0, FOV_RADIUS_FRACTION * image_size


@lru_cache(maxsize=4)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Pixel centres, so that a lesion at (cx, cy) is symmetric about its box.
    return yy + 0.5, xx + 0.5


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in roughly [-1, 1]: random cells upsampled bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def lesion_box(x0: float, y0: float, x1: float, y1: float, size: int, kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "x0": int(max(0, math.floor(x0))),
        "y0": int(max(0, math.floor(y0))),
        "x1": int(min(size, math.ceil(x1))),
        "y1": int(min(size, math.ceil(y1))),
    }


def blob(
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


def walk(
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


def clip_to_fov(pts: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    inside = np.linalg.norm(pts - centre, axis=1) < radius
    if not inside.all():
        first_out = int(np.argmin(inside))
        pts = pts[: max(first_out + 1, 2)]
    return pts


def draw_tapered(draw: ImageDraw.ImageDraw, pts: np.ndarray, w0: float, w1: float, chunk: int = 5) -> None:
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
    draw_tapered(draw, pts, w0, w1)
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
        branch = walk(rng, pts[k], heading, length, -side * rng.uniform(0.2, 0.6), 0.05, step)
        branch = clip_to_fov(branch, centre, radius)
        _vessel_tree(rng, draw, branch, parent_w * 0.65, parent_w * 0.3, depth - 1, fovea, fov, step)


def draw_vessels(
    rng: np.random.Generator,
    size: int,
    disc: np.ndarray,
    disc_radius: float,
    fovea: np.ndarray,
    nasal_sign: float,
    grade: int,
    artery_scale: float = 1.0,
    vein_paths: list[tuple[np.ndarray, float, float, bool]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render vein and artery coverage masks (float32, 0-1) at ``size``, drawn supersampled.

    ``artery_scale`` narrows the arteries (hypertensive retinopathy); it changes widths only, never the random
    draws, so the tree keeps its shape. ``vein_paths``, when given, receives each main vein as (points in image
    pixels, width in pixels, vertical sign: -1 superior, 1 inferior, temporal: True for the arcades, False for
    the shorter nasal veins), for signs drawn along the veins.
    """
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
    if artery_scale != 1.0:
        art_w *= artery_scale
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
            pts = walk(rng, start, heading0, length, total_turn, 0.03, step, turn_until=rng.uniform(0.45, 0.65))
            pts = clip_to_fov(pts, centre, radius)
            _vessel_tree(rng, draw, pts, w, w * 0.4, 2, fov_big, fov, step)
            if draw is dv:
                beaded.append((pts, w))
                if vein_paths is not None:
                    vein_paths.append((pts / ss, w / ss, vertical, True))
            # Nasal vessels: shorter, heading up or down and nasally.
            heading_n = math.atan2(vertical, nasal_sign * rng.uniform(0.4, 1.0))
            target_n = math.atan2(vertical * 0.3, nasal_sign)
            turn_n = (target_n - heading_n + math.pi) % (2 * math.pi) - math.pi
            pts = walk(
                rng,
                start,
                heading_n,
                rng.uniform(0.5, 0.7) * radius,
                turn_n * rng.uniform(0.3, 0.8),
                0.04,
                step,
            )
            pts = clip_to_fov(pts, centre, radius)
            _vessel_tree(rng, draw, pts, w * 0.7, w * 0.3, 1, fov_big, fov, step)
            if draw is dv and vein_paths is not None:
                vein_paths.append((pts / ss, w * 0.7 / ss, vertical, False))
        # Small macular branches heading for, but stopping short of, the fovea.
        for draw, w in ((dv, vein_w * 0.4), (da, art_w * 0.45)):
            toward = fov_big - d
            heading_m = math.atan2(toward[1], toward[0]) + vertical * rng.uniform(0.25, 0.5)
            pts = walk(
                rng,
                d,
                heading_m,
                rng.uniform(0.6, 0.8) * float(np.linalg.norm(toward)),
                -vertical * 0.3,
                0.05,
                step,
            )
            draw_tapered(draw, clip_to_fov(pts, centre, radius), w, w * 0.4)
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


# --------------------------------------------------------------------------------------------------
# Placing lesions
# --------------------------------------------------------------------------------------------------


def sample_point(
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


# --------------------------------------------------------------------------------------------------
# Background, macula and optic disc
# --------------------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """Where the structures of one eye are (pixels) and the colours signs are painted to match."""

    size: int
    nasal_sign: float  # +1: the disc is on the right of the image (a right eye), -1 on the left
    fovea: np.ndarray
    disc: np.ndarray
    disc_r: float
    disc_col: tuple[float, float, float]
    cup: np.ndarray
    cup_r: float


def draw_anatomy(rng: np.random.Generator, size: int, laterality: str) -> tuple[np.ndarray, Anatomy]:
    """Background, macula and optic disc of a healthy eye: the float RGB image (0-1) and where things are."""
    yy, xx = pixel_grid(size)
    cx, cy, fov_r = fov_geometry(size)
    nasal_sign = 1.0 if laterality == "right" else -1.0

    # Anatomy: fovea near the centre, disc 2.5 disc diameters nasal and slightly above it.
    disc_d = 0.105 * size * rng.uniform(0.9, 1.1)
    disc_r = disc_d / 2.0
    fovea = np.array([cx - nasal_sign * 0.03 * size, cy + 0.01 * size]) + rng.normal(0, 0.012 * size, 2)
    disc = fovea + np.array([nasal_sign * 2.5 * disc_d, -0.25 * disc_d]) + rng.normal(0, 0.008 * size, 2)

    # Background: orange-red with per-image hue, mottled choroidal texture.
    base = np.array([rng.uniform(0.80, 0.95), rng.uniform(0.30, 0.42), rng.uniform(0.10, 0.20)], dtype=np.float32)
    texture = 1.0 + 0.05 * smooth_noise(rng, size, 10) + 0.025 * smooth_noise(rng, size, 40)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = base
    img *= texture[..., None]
    # Choroidal colour varies: slightly more orange in places, more red in others.
    img[..., 1] *= 1.0 + 0.08 * smooth_noise(rng, size, 6)

    # Macula: a broad darker zone with a small dark fovea and a pin-point light reflex.
    r2 = ((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (0.95 * disc_d) ** 2
    img *= (1.0 - 0.32 * np.exp(-r2))[..., None] * np.array([1.0, 0.9, 0.95], np.float32)
    blob(img, fovea[0], fovea[1], 0.16 * disc_d, 0.16 * disc_d, (0.7, 0.6, 0.65), 0.8, profile="gauss")
    blob(img, fovea[0], fovea[1], 0.025 * size, 0.025 * size, (1.0, 0.9, 0.8), 0.0)
    reflex = max(0.004 * size, 0.8)
    blob(img, fovea[0], fovea[1], reflex, reflex, (1.0, 0.85, 0.6), 0.6, mode="blend", profile="gauss")

    # Optic disc: pale yellow-orange with a soft halo, a pinker rim and a whiter cup offset temporally.
    blob(
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
    blob(img, disc[0], disc[1], disc_r, disc_r * 1.08, disc_col, 0.92, mode="blend")
    cup_r = disc_r * rng.uniform(0.3, 0.5)
    cup = disc - np.array([nasal_sign * 0.2 * disc_r, 0.0])
    blob(img, cup[0], cup[1], cup_r, cup_r * 1.1, (1.0, 0.93, 0.78), 0.85, mode="blend", profile="gauss")
    return img, Anatomy(size, nasal_sign, fovea, disc, disc_r, disc_col, cup, cup_r)
