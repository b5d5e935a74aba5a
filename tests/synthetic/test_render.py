"""Tests for the fundus drawing (retina_vqa.synthetic.render)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retina_vqa.questions import count_haemorrhage_quadrants
from retina_vqa.synthetic.render import fov_geometry, render_fundus


def test_lesion_boxes_inside_image_and_fov():
    cx, cy, radius = fov_geometry(128)
    rng = np.random.default_rng(0)
    for i in range(15):
        grade = i % 5
        image, lesions = render_fundus(rng, 128, grade, ("left", "right")[i % 2], "good")
        assert image.size == (128, 128) and image.mode == "RGB"
        assert (len(lesions) == 0) == (grade == 0)
        for b in lesions:
            assert 0 <= b["x0"] < b["x1"] <= 128 and 0 <= b["y0"] < b["y1"] <= 128
            for x, y in ((b["x0"], b["y0"]), (b["x1"], b["y0"]), (b["x0"], b["y1"]), (b["x1"], b["y1"])):
                assert math.hypot(x - cx, y - cy) <= radius + 1.5, (b, grade)
        if grade >= 3:
            assert count_haemorrhage_quadrants(lesions, 128, "left") == 4


def test_optic_disc_side_follows_laterality():
    # The disc is the brightest structure; it sits on the right of a right-eye photograph.
    for laterality, expect_right in (("right", True), ("left", False)):
        image, _ = render_fundus(np.random.default_rng(7), 128, 0, laterality, "good")
        lum = np.asarray(image.convert("L"), dtype=np.float32)
        y, x = np.unravel_index(np.argmax(lum), lum.shape)
        assert (x > 64) == expect_right


def test_quality_defects_change_image():
    good, _ = render_fundus(np.random.default_rng(3), 96, 2, "left", "good")
    dark, _ = render_fundus(np.random.default_rng(3), 96, 2, "left", "underexposed")
    bright, _ = render_fundus(np.random.default_rng(3), 96, 2, "left", "overexposed")
    mean = [np.asarray(im, dtype=np.float32).mean() for im in (dark, good, bright)]
    assert mean[0] < mean[1] < mean[2]


def _luminance_by_ring(good, defective, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Luminance of the good and the defective image in the field's centre (radius < 0.3) and outer part (0.5-0.97
    of the radius): ``(good centre, defective centre, good outer, defective outer)``."""
    cx, cy, radius = fov_geometry(size)
    yy, xx = np.mgrid[0:size, 0:size]
    dist = np.hypot(xx - cx, yy - cy) / radius
    centre, outer = dist < 0.3, (dist > 0.5) & (dist < 0.97)
    good, defective = (np.asarray(im.convert("L"), dtype=np.float32) for im in (good, defective))
    return good[centre], defective[centre], good[outer], defective[outer]


def test_small_pupil_darkens_the_rim_far_more_than_the_centre():
    for seed in range(3):
        good, _ = render_fundus(np.random.default_rng(seed), 128, 2, "right", "good")
        small, _ = render_fundus(np.random.default_rng(seed), 128, 2, "right", "small_pupil")
        good_centre, small_centre, good_outer, small_outer = _luminance_by_ring(good, small, 128)
        # The outer field goes nearly dark; the centre keeps most of its light (the same eye is drawn before).
        assert small_outer.mean() < 0.3 * good_outer.mean()
        assert small_centre.mean() > 0.6 * good_centre.mean()
        assert small_centre.mean() > 3 * small_outer.mean()


def test_eyelashes_add_dark_and_bright_structure_near_the_rim_only():
    for seed in range(4):
        good, _ = render_fundus(np.random.default_rng(seed), 128, 1, "left", "good")
        lashes, _ = render_fundus(np.random.default_rng(seed), 128, 1, "left", "eyelashes")
        good_centre, lashes_centre, good_outer, lashes_outer = _luminance_by_ring(good, lashes, 128)
        # Streaks: outer pixels at under half their light; haze: outer pixels brighter; the centre untouched.
        assert ((lashes_outer + 1) / (good_outer + 1) < 0.5).mean() > 0.03
        assert (lashes_outer - good_outer > 20).mean() > 0.05
        assert np.abs(lashes_centre - good_centre).mean() < 0.1 * np.abs(lashes_outer - good_outer).mean()


def test_unknown_quality_is_refused_naming_the_kinds():
    with pytest.raises(ValueError, match="small_pupil"):
        render_fundus(np.random.default_rng(0), 64, 0, "left", "foggy")
