"""The pointing game's masks (retina_vqa.explain.pointing); the game itself runs in tests/test_visualize.py."""

from __future__ import annotations

import numpy as np
import pytest

from retina_vqa.explain import pointing


def test_lesion_mask_dilates_boxes_and_random_rate_is_the_area_share():
    boxes = [{"type": "haemorrhage", "x0": 10, "y0": 20, "x1": 14, "y1": 22}]
    assert pointing._lesion_mask(boxes, (64, 64), 0).sum() == 4 * 2
    assert pointing._lesion_mask(boxes, (64, 64), 1).sum() == 6 * 4
    fov = pointing._fov_mask((100, 100))
    assert fov[50, 50] and not fov[0, 0]
    assert fov.sum() == pytest.approx(np.pi * 47**2, rel=0.01)
