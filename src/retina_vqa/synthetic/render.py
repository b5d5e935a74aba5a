"""Drawing of synthetic colour fundus photographs.

This module owns the pixels: the circular field of view (``fov_geometry``, ``FOV_RADIUS_FRACTION``),
the anatomy (background, macula, optic disc), the vessel tree, the diabetic retinopathy lesions for each
ICDR grade (0-4) with one box per lesion, and the image-quality defects. ``render_fundus`` is its entry
point; it knows nothing about questions, rows or splits.

Every random draw comes from the generator passed in, in a fixed order, so the same generator state
always gives the same image and boxes; reordering draws changes every image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "FOV_RADIUS_FRACTION",
    "LATERALITIES",
    "MIN_IMAGE_SIZE",
    "QUALITIES",
    "fov_geometry",
    "render_fundus",
]

QUALITIES = ("good", "blurred", "underexposed", "overexposed")
LATERALITIES = ("left", "right")
MIN_IMAGE_SIZE = 64
# Field-of-view radius as a fraction of the image side; the circle is centred in the image.
FOV_RADIUS_FRACTION = 0.47


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def fov_geometry(image_size: int) -> tuple[float, float, float]:
    """Centre x, centre y and radius (pixels) of the circular field of view."""
    return image_size / 2.0, image_size / 2.0, FOV_RADIUS_FRACTION * image_size


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
