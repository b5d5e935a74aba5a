"""Tests for the fundus drawing (retina_vqa.synthetic.render)."""

from __future__ import annotations

import math

import numpy as np

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
