"""Diabetic retinopathy lesions, painted by ICDR grade (0-4), one box per lesion.

This module owns what diabetic retinopathy adds to a healthy eye: microaneurysms, dot/blot and flame
haemorrhages placed per image quadrant, hard exudates (clusters and circinate rings), cotton-wool spots, and at
grade 4 neovascular tufts and preretinal haemorrhages. Venous beading is part of the vessel drawing
(:func:`.anatomy.draw_vessels`). The draws come from the image's main generator, in a fixed order: this is the
stream the frozen DR-only output depends on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .anatomy import blob, lesion_box, sample_point, walk

__all__ = ["add_dr_lesions"]


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
        pts = walk(
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
    return mask, lesion_box(lo[0], lo[1], hi[0], hi[1], size, "neovascularisation")


def add_dr_lesions(
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
        p = sample_point(rng, size, r, fovea, 0.04 * s, 0.34 * s, disc, avoid_r)
        blob(img, p[0], p[1], r, r, (0.40, 0.09, 0.11), 1.0, edge=0.2 * r + 0.6)
        lesions.append(lesion_box(p[0] - r, p[1] - r, p[0] + r, p[1] + r, size, "microaneurysm"))
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
            p = sample_point(rng, size, max(rx, ry) * 1.3, centre, 0.08 * s, 0.42 * s, disc, avoid_r, quadrant_signs[q])
            angle = math.atan2(p[1] - disc[1], p[0] - disc[0]) if flame else rng.uniform(0, math.pi)
            colour = (rng.uniform(0.55, 0.68), rng.uniform(0.2, 0.3), 0.3)
            if flame:
                # Flame haemorrhages are feathered streaks along the nerve fibres.
                blob(img, p[0], p[1], rx, ry, colour, 0.95, angle=angle, profile="gauss")
            else:
                blob(img, p[0], p[1], rx, ry, colour, 0.92, angle=angle, edge=0.3 * r + 0.6)
            ext = max(rx, ry)
            # Blots are irregular: a couple of overlapping lobes.
            if not flame:
                for _ in range(int(rng.integers(0, 3))):
                    lobe = p + rng.normal(0, 0.35 * r, 2)
                    lr = r * rng.uniform(0.5, 0.8)
                    blob(img, lobe[0], lobe[1], lr, lr, colour, 0.7, edge=0.3 * lr + 0.6)
                    ext = max(ext, float(np.abs(lobe - p).max()) + lr)
            ext = min(ext, max(rx, ry) * 1.3)
            lesions.append(lesion_box(p[0] - ext, p[1] - ext, p[0] + ext, p[1] + ext, size, "haemorrhage"))

    # Hard exudates: bright yellow waxy dots in clusters (sometimes a circinate ring).
    if rng.random() < (0.8 if grade == 2 else 0.9):
        for _ in range(int(rng.integers(1, 4) if grade == 2 else rng.integers(2, 6))):
            rc = rng.uniform(0.025, 0.05) * s
            c = sample_point(rng, size, rc * 1.3, fovea, 0.06 * s, 0.3 * s, disc, avoid_r)
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
                blob(
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
            lesions.append(lesion_box(min(xs), min(ys), max(xs), max(ys), size, "hard_exudate"))

    # Cotton-wool spots: fluffy pale patches near the arcades.
    p_cws = {2: 0.45, 3: 0.75, 4: 0.6}[grade]
    if rng.random() < p_cws:
        for _ in range(int(rng.integers(1, 3) if grade == 2 else rng.integers(1, 5))):
            r = rng.uniform(0.028, 0.042) * s
            p = sample_point(rng, size, r * 1.6, fovea, 0.15 * s, 0.32 * s, disc, avoid_r)
            angle = rng.uniform(0, math.pi)
            col = (0.97, rng.uniform(0.88, 0.93), rng.uniform(0.8, 0.86))
            blob(img, p[0], p[1], r, r * 0.7, col, 0.85, angle=angle, mode="blend", profile="gauss")
            # Fluffy outline: a few overlapping soft lobes.
            for _ in range(3):
                q = p + rng.normal(0, 0.3 * r, 2)
                blob(
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
            lesions.append(lesion_box(p[0] - ext, p[1] - ext, p[0] + ext, p[1] + ext, size, "cotton_wool_spot"))

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
            sites.append(sample_point(rng, size, 0.075 * s * 1.2, fovea, 0.2 * s, 0.32 * s, disc, avoid_r))
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
        p = sample_point(rng, size, rx * 1.05, fovea, 0.15 * s, 0.3 * s, disc, avoid_r)
        blob(img, p[0], p[1], rx, ry, (0.5, 0.14, 0.18), 0.97, flat_top=0.45, edge=0.06 * rx + 0.6)
        # Blood settles: the lower part of the boat is darker.
        blob(img, p[0], p[1] + 0.35 * ry, rx * 0.8, ry * 0.5, (0.75, 0.6, 0.65), 0.8, profile="gauss")
        # An uneven lower border, so the boat is not a perfect half ellipse.
        for _ in range(3):
            q = p + np.array([rng.uniform(-0.6, 0.6) * rx, rng.uniform(0.1, 0.4) * ry])
            blob(img, q[0], q[1], rx * 0.35, ry * 0.55, (0.55, 0.18, 0.2), 0.8, profile="gauss")
        lesions.append(lesion_box(p[0] - rx, p[1] - 0.45 * ry, p[0] + rx, p[1] + ry, size, "preretinal_haemorrhage"))
    return lesions
