"""The signs of the conditions beside diabetic retinopathy: glaucoma, AMD, hypertensive retinopathy, vein occlusion.

This module owns how each stage of :mod:`.conditions` looks, and which findings (``questions.FINDINGS``) and
lesion boxes it leaves. Sizes are fractions of the image side chosen so that every sign survives the demo's
128 px: a druse is at least one pixel across there, a flame haemorrhage three, a cup is judged on a disc of
about fourteen.

Each condition draws from its own generator (``render.render_eye`` hands them out), never from the one that
draws the anatomy and the diabetic lesions. Haemorrhages are boxed as "haemorrhage", cotton-wool spots as
"cotton_wool_spot" and exudates as "hard_exudate", so the DR questions about them ("are there haemorrhages?",
the quadrant questions) count every cause; the other boxes have types of their own (``SIGN_LESION_TYPES``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..questions import haemorrhage_quadrant
from .anatomy import Anatomy, blob, clip_to_fov, fov_geometry, lesion_box, sample_point

__all__ = [
    "SIGN_LESION_TYPES",
    "artery_scale",
    "draw_amd",
    "draw_arteriolar_reflex",
    "draw_av_nicking",
    "draw_dilated_veins",
    "draw_disc_haemorrhage",
    "draw_glaucoma_disc",
    "draw_hypertensive",
    "draw_vein_occlusion",
    "occluded_veins",
]

# Box types only these signs draw (the DR types are in questions.LESION_TYPES).
SIGN_LESION_TYPES = (
    "drusen",
    "pigment_change",
    "geographic_atrophy",
    "choroidal_neovascularisation",
    "av_nicking",
    "disc_swelling",
)

_HAEMORRHAGE_RED = (0.5, 0.1, 0.13)
_QUADRANT_SIGNS = [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)]


# --------------------------------------------------------------------------------------------------
# Glaucoma: the cup, the rim, a disc haemorrhage
# --------------------------------------------------------------------------------------------------


def draw_glaucoma_disc(
    rng: np.random.Generator, img: np.ndarray, a: Anatomy, stage: str, cup_to_disc: float | None
) -> set[str]:
    """Repaint the optic disc with a sharp pale cup of the drawn vertical ``cup_to_disc`` ratio.

    Every eye of a dataset that draws glaucoma gets this cup (healthy ones 0.3-0.5), so the cup's size, not its
    style, tells the stages apart. From "moderate" on the cup also slides towards one pole: the rim there thins
    to a sliver (the inferior or superior notch of glaucomatous discs).
    """
    if cup_to_disc is None:
        raise ValueError("draw_glaucoma_disc needs the cup-to-disc ratio of the eye")
    findings: set[str] = set()
    # Cover the healthy cup of draw_anatomy with a pinker neuroretinal rim, then draw the cup whose size the
    # answers give, nearly white: the rim-to-cup contrast is what a grader (and a model at 128 px) reads.
    rim = (a.disc_col[0] * 0.97, a.disc_col[1] * 0.8, a.disc_col[2] * 0.78)
    blob(img, a.disc[0], a.disc[1], a.disc_r, a.disc_r * 1.08, rim, 1.0, mode="blend")
    vertical_r = cup_to_disc * a.disc_r * 1.08
    horizontal_r = vertical_r * rng.uniform(0.85, 0.95)
    centre = a.disc - np.array([a.nasal_sign * 0.15 * a.disc_r * (1.0 - cup_to_disc), 0.0])
    if stage in ("moderate", "advanced"):
        # Rim thinning: leave a sliver of rim (8% of the disc radius) at the pole the cup slides to.
        pole = 1.0 if rng.random() < 0.65 else -1.0  # the inferior rim thins first more often
        room = a.disc_r * 1.08 - vertical_r - 0.08 * a.disc_r
        centre = centre + np.array([0.0, pole * max(room, 0.0)])
        findings.add("rim_thinning")
    else:
        rng.random()  # keep the draws per eye the same count whatever the stage
    if stage != "none":
        findings.add("enlarged_cup")
    # A crisp pale cup with a brighter floor, so its edge reads at 128 px.
    blob(img, centre[0], centre[1], horizontal_r, vertical_r, (1.0, 0.95, 0.84), 0.97, mode="blend", edge=0.8)
    blob(
        img,
        centre[0],
        centre[1],
        horizontal_r * 0.7,
        vertical_r * 0.7,
        (1.0, 0.97, 0.88),
        0.6,
        mode="blend",
        profile="gauss",
    )
    return findings


def draw_disc_haemorrhage(
    rng: np.random.Generator, img: np.ndarray, a: Anatomy, stage: str
) -> tuple[set[str], list[dict[str, Any]]]:
    """In half of the glaucomatous eyes, a splinter haemorrhage across the disc margin at a temporal pole."""
    present_draw, pole_draw, angle_draw = rng.random(), rng.random(), rng.random()
    if stage == "none" or present_draw >= 0.5:
        return set(), []
    pole = 1.0 if pole_draw < 0.65 else -1.0
    # On the margin, towards the temporal side of the pole, lying radially (along the nerve fibres).
    angle = math.atan2(pole, -a.nasal_sign * (0.5 + 0.4 * angle_draw))
    direction = np.array([math.cos(angle), math.sin(angle)])
    p = a.disc + direction * a.disc_r * 1.02
    rx, ry = 0.5 * a.disc_r, 0.17 * a.disc_r
    blob(img, p[0], p[1], rx, ry, _HAEMORRHAGE_RED, 0.97, angle=angle, edge=0.6)
    box = lesion_box(p[0] - rx, p[1] - rx, p[0] + rx, p[1] + rx, a.size, "haemorrhage")
    return {"disc_haemorrhage"}, [box]


# --------------------------------------------------------------------------------------------------
# Age-related macular degeneration: drusen, pigment, atrophy, neovascular membrane
# --------------------------------------------------------------------------------------------------


def _macular_point(rng: np.random.Generator, a: Anatomy, radius: float) -> np.ndarray:
    # Uniform over a disc of `radius` around the fovea (sqrt: uniform by area, not clumped in the middle).
    r = radius * math.sqrt(rng.random())
    t = rng.uniform(0, 2 * math.pi)
    return a.fovea + r * np.array([math.cos(t), math.sin(t)])


def _drusen(
    rng: np.random.Generator, img: np.ndarray, a: Anatomy, count: int, r_range: tuple[float, float], spread: float
) -> list[np.ndarray]:
    s = float(a.size)
    corners = []
    for _ in range(count):
        p = _macular_point(rng, a, spread)
        r = rng.uniform(*r_range) * s
        colour = (1.0, rng.uniform(0.85, 0.93), rng.uniform(0.48, 0.6))
        # Drusen are soft yellow deposits: a flat blend with a soft rim, brighter than anything around them.
        blob(img, p[0], p[1], r, r * rng.uniform(0.8, 1.0), colour, 0.9, mode="blend", edge=0.35 * r + 0.5)
        corners += [p - r, p + r]
    return corners


def _corners_box(corners: Sequence[np.ndarray], size: int, kind: str) -> dict[str, Any]:
    pts = np.array(corners)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return lesion_box(lo[0], lo[1], hi[0], hi[1], size, kind)


def _pigment(rng: np.random.Generator, img: np.ndarray, a: Anatomy, spread: float) -> dict[str, Any]:
    s = float(a.size)
    corners = []
    for _ in range(int(rng.integers(3, 7))):
        p = _macular_point(rng, a, spread)
        r = rng.uniform(0.007, 0.011) * s
        # Clumps of dark pigment next to paler, depigmented patches.
        blob(img, p[0], p[1], r, r * rng.uniform(0.6, 1.0), (0.3, 0.2, 0.15), 0.9, angle=rng.uniform(0, 3), edge=0.6)
        q = p + rng.normal(0, 1.5 * r, 2)
        blob(img, q[0], q[1], r * 1.3, r, (0.95, 0.7, 0.5), 0.5, mode="blend", profile="gauss")
        corners += [p - r, p + r]
    return _corners_box(corners, a.size, "pigment_change")


def draw_amd(
    rng: np.random.Generator, img: np.ndarray, a: Anatomy, stage: str
) -> tuple[set[str], list[dict[str, Any]]]:
    """Macular signs of an AREDS-like stage; returns the findings and boxes."""
    if stage == "none":
        return set(), []
    s = float(a.size)
    spread = 2.6 * a.disc_r  # the drusen lie within about one and a half disc diameters of the fovea
    findings: set[str] = set()
    boxes: list[dict[str, Any]] = []
    if stage == "early":
        corners = _drusen(rng, img, a, int(rng.integers(6, 12)), (0.0045, 0.006), spread)
        corners += _drusen(rng, img, a, int(rng.integers(10, 18)), (0.008, 0.011), spread)
        findings |= {"small_drusen", "intermediate_drusen"}
        boxes.append(_corners_box(corners, a.size, "drusen"))
        return findings, boxes
    corners = _drusen(rng, img, a, int(rng.integers(4, 9)), (0.008, 0.011), spread)
    corners += _drusen(rng, img, a, int(rng.integers(6, 12) if stage == "intermediate" else rng.integers(3, 7)),
                       (0.014, 0.02), spread)  # fmt: skip
    findings.add("large_drusen")
    boxes.append(_corners_box(corners, a.size, "drusen"))
    pigment_draw = rng.random()
    if stage == "late dry":
        # Geographic atrophy: a sharply outlined pale patch where the choroidal vessels show through.
        p = a.fovea + rng.normal(0, 0.01 * s, 2)
        rx = rng.uniform(0.035, 0.05) * s
        ry = rx * rng.uniform(0.75, 1.0)
        angle = rng.uniform(0, math.pi)
        blob(img, p[0], p[1], rx, ry, (1.0, 0.8, 0.58), 0.92, angle=angle, mode="blend", edge=0.7)
        for _ in range(3):
            q = p + rng.normal(0, 0.35 * rx, 2)
            blob(
                img, q[0], q[1], rx * 0.6, rx * 0.12, (0.85, 0.45, 0.3), 0.55, angle=rng.uniform(0, 3), profile="gauss"
            )
        findings.add("geographic_atrophy")
        boxes.append(lesion_box(p[0] - rx, p[1] - rx, p[0] + rx, p[1] + rx, a.size, "geographic_atrophy"))
    elif stage == "late wet":
        # Neovascular AMD: a grey-green membrane under the fovea ringed by dark subretinal blood.
        p = a.fovea + rng.normal(0, 0.01 * s, 2)
        rh = rng.uniform(0.045, 0.06) * s
        blob(img, p[0], p[1], rh, rh * rng.uniform(0.75, 0.95), _HAEMORRHAGE_RED, 0.95, angle=rng.uniform(0, 3), edge=1)
        for _ in range(3):
            q = p + rng.normal(0, 0.45 * rh, 2)
            lr = rh * rng.uniform(0.4, 0.6)
            blob(img, q[0], q[1], lr, lr, (0.42, 0.08, 0.1), 0.85, edge=1.0)
        rm = rh * rng.uniform(0.45, 0.55)
        blob(img, p[0], p[1], rm, rm * 0.85, (0.62, 0.66, 0.5), 0.9, mode="blend", profile="gauss")
        findings |= {"choroidal_neovascularisation", "macular_haemorrhage"}
        boxes.append(lesion_box(p[0] - rh, p[1] - rh, p[0] + rh, p[1] + rh, a.size, "haemorrhage"))
        boxes.append(lesion_box(p[0] - rm, p[1] - rm, p[0] + rm, p[1] + rm, a.size, "choroidal_neovascularisation"))
    if pigment_draw < (0.7 if stage == "intermediate" else 0.4):
        findings.add("pigment_changes")
        boxes.append(_pigment(rng, img, a, spread))
    return findings, boxes


# --------------------------------------------------------------------------------------------------
# Hypertensive retinopathy: narrow arterioles, AV nicking, flames, cotton-wool spots, swollen disc
# --------------------------------------------------------------------------------------------------


def artery_scale(hypertensive_stage: str) -> float:
    """Width factor of the arteries: generalised arteriolar narrowing at every hypertensive grade."""
    if hypertensive_stage == "none":
        return 1.0
    return 0.6 if hypertensive_stage == "grade 1" else 0.5


def draw_arteriolar_reflex(img: np.ndarray, arteries: np.ndarray, stage: str) -> None:
    """The widened light reflex of sclerosed arterioles: copper wiring at grade 1, silver wiring from grade 2.

    At 128 px a narrowed artery is under a pixel wide and its narrowing alone is lost in the variation of the
    vessel tree; the pale reflex along it is what a small model can see (and what tells grade 1 from 2).
    """
    if stage == "none":
        return
    colour = (1.0, 0.74, 0.5) if stage == "grade 1" else (1.0, 0.93, 0.86)
    a = (0.8 * arteries)[..., None]
    img *= 1.0 - a
    img += a * np.array(colour, np.float32)


def draw_av_nicking(
    rng: np.random.Generator, veins: np.ndarray, arteries: np.ndarray, a: Anatomy, stage: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """From grade 2, thin the veins on both sides of three to five artery crossings (arteriovenous nicking)."""
    count = int(rng.integers(3, 6))
    if stage in ("none", "grade 1"):
        return veins, []
    size = a.size
    cx, cy, fov_r = fov_geometry(size)
    ys, xs = np.nonzero((veins > 0.45) & (arteries > 0.45))
    if len(xs) == 0:
        return veins, []
    pts = np.stack([xs + 0.5, ys + 0.5], axis=1)
    # Crossings away from the disc (the vessels overlap on it anyway) and inside the field of view.
    keep = (np.linalg.norm(pts - a.disc, axis=1) > 2.2 * a.disc_r) & (
        np.linalg.norm(pts - np.array([cx, cy]), axis=1) < 0.85 * fov_r
    )
    pts = pts[keep]
    chosen: list[np.ndarray] = []
    for i in rng.permutation(len(pts)):
        if len(chosen) == count:
            break
        if all(np.linalg.norm(pts[i] - c) > 0.08 * size for c in chosen):
            chosen.append(pts[i])
    veins = veins.copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    boxes = []
    reach = 0.045 * size  # the vein fades over about two vein widths on either side: a few pixels at 128 px
    for c in chosen:
        fall = np.exp(-((((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / reach**2) ** 2))
        # The vein fades out on either side of the artery that compresses it; the artery stays whole on top.
        veins *= 1.0 - 0.95 * fall * (1.0 - np.clip(arteries * 2.0, 0.0, 1.0))
        boxes.append(lesion_box(c[0] - reach, c[1] - reach, c[0] + reach, c[1] + reach, size, "av_nicking"))
    return veins, boxes


def _flame(rng: np.random.Generator, img: np.ndarray, a: Anatomy, p: np.ndarray, scale: float = 1.0) -> dict:
    """A feathered streak lying along the nerve fibres (radial from the disc); returns its box."""
    s = float(a.size)
    rx = rng.uniform(0.02, 0.032) * s * scale
    ry = rx * rng.uniform(0.28, 0.38)
    angle = math.atan2(p[1] - a.disc[1], p[0] - a.disc[0]) + rng.normal(0, 0.15)
    colour = (rng.uniform(0.45, 0.55), rng.uniform(0.08, 0.14), rng.uniform(0.1, 0.15))
    blob(img, p[0], p[1], rx, ry, colour, 0.97, angle=angle, profile="gauss")
    blob(img, p[0], p[1], rx * 0.6, ry * 0.7, colour, 0.6, angle=angle, edge=0.8)
    ext = rx * 1.1
    return lesion_box(p[0] - ext, p[1] - ext, p[0] + ext, p[1] + ext, a.size, "haemorrhage")


def _cotton_wool(rng: np.random.Generator, img: np.ndarray, a: Anatomy, p: np.ndarray) -> dict:
    s = float(a.size)
    r = rng.uniform(0.028, 0.04) * s
    col = (0.97, rng.uniform(0.9, 0.95), rng.uniform(0.82, 0.88))
    blob(img, p[0], p[1], r, r * 0.7, col, 0.88, angle=rng.uniform(0, math.pi), mode="blend", profile="gauss")
    for _ in range(3):
        q = p + rng.normal(0, 0.3 * r, 2)
        blob(img, q[0], q[1], r * 0.55, r * 0.45, col, 0.7, angle=rng.uniform(0, 3), mode="blend", profile="gauss")
    ext = r * 1.25
    return lesion_box(p[0] - ext, p[1] - ext, p[0] + ext, p[1] + ext, a.size, "cotton_wool_spot")


def _macular_star(rng: np.random.Generator, img: np.ndarray, a: Anatomy) -> dict:
    """Hard exudates in spokes around the fovea (the macular star of severe hypertension)."""
    s = float(a.size)
    corners = []
    for spoke in range(int(rng.integers(6, 10))):
        t = spoke / 8.0 * 2 * math.pi + rng.normal(0, 0.2)
        for k in range(int(rng.integers(2, 4))):
            d = (0.03 + 0.014 * k) * s
            p = a.fovea + d * np.array([math.cos(t), math.sin(t)])
            r = rng.uniform(0.0045, 0.007) * s
            blob(img, p[0], p[1], r, r * 0.8, (1.0, 0.92, 0.5), 0.92, angle=t, mode="blend", edge=0.3 * r + 0.5)
            corners += [p - r, p + r]
    return _corners_box(corners, a.size, "hard_exudate")


def _disc_swelling(rng: np.random.Generator, img: np.ndarray, a: Anatomy) -> dict:
    """A swollen, hyperaemic disc whose blurred margin hides the vessels crossing it."""
    r = a.disc_r * rng.uniform(1.55, 1.75)
    blob(img, a.disc[0], a.disc[1], r, r * 1.05, (1.0, 0.68, 0.5), 0.85, mode="blend", profile="gauss")
    blob(img, a.disc[0], a.disc[1], a.disc_r * 1.1, a.disc_r * 1.15, (0.98, 0.62, 0.5), 0.55, mode="blend", edge=2.0)
    return lesion_box(a.disc[0] - r, a.disc[1] - r, a.disc[0] + r, a.disc[1] + r, a.size, "disc_swelling")


def draw_hypertensive(
    rng: np.random.Generator, img: np.ndarray, a: Anatomy, stage: str
) -> tuple[set[str], list[dict[str, Any]]]:
    """Keith-Wagener-Barker-like signs painted after the vessels; narrowing and nicking are in the vessel masks."""
    if stage == "none":
        return set(), []
    findings = {"arteriolar_narrowing"}
    if stage != "grade 1":
        findings.add("av_nicking")
    if stage in ("grade 1", "grade 2"):
        return findings, []
    s = float(a.size)
    boxes = []
    avoid_r = a.disc_r * 1.4
    for _ in range(int(rng.integers(4, 9))):
        # Flames cluster around the disc, in the nerve fibre layer the arcades run through.
        p = sample_point(rng, a.size, 0.04 * s, a.disc, 1.6 * a.disc_r, 0.3 * s, a.disc, avoid_r)
        boxes.append(_flame(rng, img, a, p))
    for _ in range(int(rng.integers(2, 5))):
        p = sample_point(rng, a.size, 0.05 * s, a.disc, 2.0 * a.disc_r, 0.28 * s, a.disc, avoid_r)
        boxes.append(_cotton_wool(rng, img, a, p))
    findings |= {"flame_haemorrhages", "cotton_wool_spots"}
    if rng.random() < 0.5:
        boxes.append(_macular_star(rng, img, a))
        findings.add("hard_exudates")
    if stage == "grade 4":
        boxes.append(_disc_swelling(rng, img, a))
        findings.add("disc_swelling")
    return findings, boxes


# --------------------------------------------------------------------------------------------------
# Retinal vein occlusion: dilated tortuous veins, haemorrhages in the drained territory
# --------------------------------------------------------------------------------------------------


def occluded_veins(
    vein_paths: Sequence[tuple[np.ndarray, float, float, bool]], stage: str, quadrant: str | None
) -> list[tuple[np.ndarray, float]]:
    """The stretches of vein behind the occlusion, as (points, width): from the crossing onwards for a branch, all
    veins for central, none without an occlusion. Both drawings of the occlusion follow them."""
    out = []
    for pts, w, vertical, temporal in vein_paths:
        if stage == "central":
            out.append((pts, w))
        elif stage == "branch" and temporal and quadrant is not None:
            if (vertical < 0) == quadrant.startswith("superior"):
                # A branch occlusion sits at an arteriovenous crossing a little way along the arcade.
                out.append((pts[int(len(pts) * 0.3) :], w))
    return out


def draw_dilated_veins(
    rng: np.random.Generator, img: np.ndarray, a: Anatomy, occluded: Sequence[tuple[np.ndarray, float]]
) -> None:
    """Darken and widen the `occluded_veins` along a wavy copy of their course (dilated, tortuous veins)."""
    size = a.size
    ss = 3
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, fov_r = fov_geometry(size)
    for pts, w in occluded:
        if len(pts) < 4:
            continue
        seg = np.diff(pts, axis=0)
        normal = np.stack([-seg[:, 1], seg[:, 0]], axis=1) / (np.linalg.norm(seg, axis=1, keepdims=True) + 1e-6)
        normal = np.vstack([normal, normal[-1:]])
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
        # Two incommensurate waves: tortuous rather than a regular coil.
        period = rng.uniform(0.07, 0.09) * size
        phase = rng.uniform(0, 2 * math.pi, 2)
        wave = np.sin(2 * math.pi * arc / period + phase[0]) + 0.5 * np.sin(
            2 * math.pi * arc / (0.43 * period) + phase[1]
        )
        wavy = clip_to_fov(pts + normal * (0.6 * w * wave)[:, None], np.array([cx, cy]), fov_r)
        width = max(int(round(1.7 * w * ss)), 2)
        draw.line([tuple(p * ss) for p in wavy], fill=255, width=width, joint="curve")
    mask = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    img *= 1.0 - mask[..., None] * (1.0 - np.array([0.48, 0.15, 0.22], np.float32))


def draw_vein_occlusion(
    rng: np.random.Generator,
    img: np.ndarray,
    a: Anatomy,
    occluded: Sequence[tuple[np.ndarray, float]],
    stage: str,
    quadrant: str | None,
) -> tuple[set[str], list[dict[str, Any]]]:
    """Flame haemorrhages in the occluded territory (one temporal quadrant along the `occluded_veins`, or all
    four), cotton-wool spots, and for some central occlusions a swollen disc."""
    if stage == "none":
        return set(), []
    s = float(a.size)
    boxes: list[dict[str, Any]] = []
    laterality = "right" if a.nasal_sign > 0 else "left"
    if stage == "branch":
        pts = np.vstack([p for p, _ in occluded]) if occluded else np.array([a.fovea])
        cx, cy, fov_r = fov_geometry(a.size)
        wanted = int(rng.integers(10, 16))
        for _ in range(200):
            if len(boxes) == wanted:
                break
            # Along the blocked vein, spilling to either side of it, within its quadrant.
            p = pts[int(rng.integers(0, len(pts)))] + rng.normal(0, 0.035 * s, 2)
            inside = np.linalg.norm(p - np.array([cx, cy])) < fov_r - 0.06 * s
            off_disc = np.linalg.norm(p - a.disc) > 1.6 * a.disc_r
            if inside and off_disc and haemorrhage_quadrant(p[0], p[1], a.size, laterality) == quadrant:
                boxes.append(_flame(rng, img, a, p))
        # A vein clipped short by the field of view can leave too few spots: fill the quadrant directly.
        signs_of_quadrant = (-a.nasal_sign, -1.0 if quadrant == "superior-temporal" else 1.0)
        while len(boxes) < 4:
            p = sample_point(rng, a.size, 0.04 * s, np.array([s / 2, s / 2]), 0.12 * s, 0.38 * s, a.disc,
                             1.6 * a.disc_r, signs_of_quadrant)  # fmt: skip
            boxes.append(_flame(rng, img, a, p))
    else:
        for q in _QUADRANT_SIGNS:
            for _ in range(int(rng.integers(7, 11))):
                p = sample_point(rng, a.size, 0.04 * s, np.array([s / 2, s / 2]), 0.1 * s, 0.4 * s, a.disc,
                                 1.5 * a.disc_r, q)  # fmt: skip
                boxes.append(_flame(rng, img, a, p))
    findings = {"flame_haemorrhages", "dilated_tortuous_veins"}
    if rng.random() < (0.4 if stage == "branch" else 0.6):
        for _ in range(int(rng.integers(1, 3))):
            p = sample_point(rng, a.size, 0.05 * s, a.disc, 2.0 * a.disc_r, 0.28 * s, a.disc, 1.5 * a.disc_r)
            boxes.append(_cotton_wool(rng, img, a, p))
        findings.add("cotton_wool_spots")
    if stage == "central" and rng.random() < 0.6:
        boxes.append(_disc_swelling(rng, img, a))
        findings.add("disc_swelling")
    return findings, boxes
