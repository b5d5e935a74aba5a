"""Grad-CAM maps of the question encoder's cross-attention (retina_vqa.explain.gradcam) on the tiny model."""

from __future__ import annotations

import copy

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from retina_vqa.explain import gradcam
from retina_vqa.models.attention import attention_implementation, set_attention_implementation
from retina_vqa.models.blip import resize_image_size

from ..conftest import make_tiny_model


@pytest.fixture(scope="module")
def fundus(tiny_dataset_dir) -> Image.Image:
    return datasets.load_from_disk(str(tiny_dataset_dir))["test"][0]["image"].convert("RGB")


def assert_unit_map(heatmap: np.ndarray, shape: tuple[int, ...]) -> None:
    assert heatmap.shape == shape
    assert np.isfinite(heatmap).all()
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert heatmap.max() == pytest.approx(1.0)


def test_gradcam_map_has_the_patch_grid_shape(tiny_processor, fundus):
    model = make_tiny_model()
    heatmap, answer = gradcam.gradcam_map(model, tiny_processor, fundus, "are there haemorrhages?")
    assert_unit_map(heatmap, (8, 8))  # 128 px / patch 16
    assert isinstance(answer, str)
    tokens = len(tiny_processor.tokenizer("are there haemorrhages?")["input_ids"])
    per_token, answer_again = gradcam.gradcam_map(
        model, tiny_processor, fundus, "are there haemorrhages?", layer=0, per_token=True
    )
    assert per_token.shape == (tokens, 8, 8) and answer_again == answer
    for token_map in per_token:
        assert_unit_map(token_map, (8, 8))
    assert all(p.grad is None for p in model.parameters())  # the model's gradients are left alone


def test_gradcam_map_follows_the_image_size(tiny_processor, fundus):
    processor = copy.deepcopy(tiny_processor)
    processor.image_processor.size = {"height": 192, "width": 192}
    resized = make_tiny_model()
    resize_image_size(resized, 192)
    heatmap, _ = gradcam.gradcam_map(resized, processor, fundus, "are there haemorrhages?")
    assert_unit_map(heatmap, (12, 12))
    # A 128 px model fed 192 px images interpolates its position embeddings on the fly.
    heatmap, _ = gradcam.gradcam_map(make_tiny_model(), processor, fundus, "are there microaneurysms?")
    assert_unit_map(heatmap, (12, 12))


def test_gradcam_map_depends_on_the_cross_attention_gradient(tiny_processor, fundus):
    model = make_tiny_model()
    question = "are there haemorrhages?"
    normal, answer = gradcam.gradcam_map(model, tiny_processor, fundus, question)

    def zero_gradient(module, args, output):
        if output[1].requires_grad:
            output[1].register_hook(torch.zeros_like)

    handle = model.text_encoder.encoder.layer[-1].crossattention.self.register_forward_hook(zero_gradient)
    try:
        blocked, blocked_answer = gradcam.gradcam_map(model, tiny_processor, fundus, question)
    finally:
        handle.remove()
    assert blocked_answer == answer
    assert not np.allclose(normal, blocked)
    assert np.all(blocked == 0)  # no positive gradient, no evidence


def test_overlay_keeps_the_image_size(fundus):
    heatmap = np.zeros((8, 8), dtype=np.float32)
    heatmap[2, 5] = 1.0
    picture = gradcam.overlay(fundus, heatmap)
    assert picture.size == fundus.size and picture.mode == "RGB"
    assert not np.array_equal(np.asarray(picture), np.asarray(fundus))


def test_gradcam_works_on_a_fused_attention_model_and_restores_it(tiny_processor, fundus):
    eager = make_tiny_model()
    expected, answer = gradcam.gradcam_map(eager, tiny_processor, fundus, "are there haemorrhages?")
    fused = make_tiny_model()
    set_attention_implementation(fused, "sdpa")
    heatmap, fused_answer = gradcam.gradcam_map(fused, tiny_processor, fundus, "are there haemorrhages?")
    assert fused_answer == answer
    np.testing.assert_allclose(heatmap, expected, atol=1e-5)
    assert attention_implementation(fused) == "sdpa"
