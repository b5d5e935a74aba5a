"""pixel_values: bit for bit the image processor's output, and the processor itself where a setting differs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from retina_vqa.data.pixels import pixel_values

from ..helpers import TINY_CONFIG


@pytest.fixture
def image_processor():
    return AutoProcessor.from_pretrained(TINY_CONFIG).image_processor


def _images(sizes, mode="RGB"):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    return [im.convert(mode) for im in images]


def test_a_batch_equals_the_processors_output_bit_for_bit(image_processor):
    from retina_vqa.data.pixels import _plan

    if _plan(image_processor) is None:
        pytest.skip("a torchvision image processor batches by itself")
    images = _images([(128, 128), (300, 200), (64, 90), (1411, 1411)])  # as is, down, up, a full fundus photograph
    expected = image_processor(images=images, return_tensors="pt")["pixel_values"]
    got = pixel_values(image_processor, images)
    assert got.dtype == expected.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_settings_it_does_not_reproduce_go_through_the_processor(image_processor, monkeypatch):
    images = _images([(100, 140), (128, 128)])
    image_processor.do_normalize = False  # the batched path always normalises: it must not be taken
    expected = image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert expected.min() >= 0  # rescaled only
    assert torch.equal(pixel_values(image_processor, images), expected)
    image_processor.do_normalize = True
    grey = _images([(128, 128)], mode="L")  # not RGB: the processor converts it
    assert torch.equal(
        pixel_values(image_processor, grey), image_processor(images=grey, return_tensors="pt")["pixel_values"]
    )
