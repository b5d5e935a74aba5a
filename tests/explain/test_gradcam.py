"""Grad-CAM maps (retina_vqa.explain.gradcam) on the tiny models: BLIP's question-encoder cross-attention, and the
Q-Former's query cross-attention of BLIP-2 (OPT, T5) and InstructBLIP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from retina_vqa.data.collator import PromptCollator
from retina_vqa.data.images import load_image
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.explain import gradcam
from retina_vqa.models.attention import attention_implementation, set_attention_implementation
from retina_vqa.models.blip import resize_image_size
from retina_vqa.models.blip2 import generate_prompt_answers
from retina_vqa.models.family import tokenize_prompts_and_answers

from ..helpers import make_tiny_model
from ..models.test_blip2 import build
from ..same_answers import CLEAR, StepRecorder, agreeing_steps


@pytest.fixture(scope="module")
def fundus(tiny_dataset_dir) -> Image.Image:
    return load_image(load_dataset_dir(str(tiny_dataset_dir))["test"][0]["image"])


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


# BLIP-2 / InstructBLIP: a prompt that is not the default one, as a saved model carries it in its config.
PROMPT = "Fundus question: {question} Short answer:"
QUESTION = "are there haemorrhages?"


def prompt_answer(model, processor, layout, image, question: str, **settings) -> str:
    """What retina_vqa answers for `question` alone: its prompt, the collator, `generate_prompt_answers`."""
    text = tokenize_prompts_and_answers(
        {"question": [question]}, processor, layout, "question", None, model.config.prompt_template, 64, 0
    )
    row = {**{k: v[0] for k, v in text.items()}, "image": image}
    batch = PromptCollator.from_layout(layout, processor.image_processor)([row])
    generated = generate_prompt_answers(model, layout, **batch, **settings)
    return processor.tokenizer.decode(generated[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("name", ["opt", "instructblip", "t5"])
def test_blip2_gradcam_maps_the_queries_cross_attention_for_the_models_own_answer(name, fundus):
    model, processor, layout = build(name)
    model.config.prompt_template = PROMPT
    # An untrained T5 puts its mass on the pad token (its decoder start); trained, it never emits it.
    settings = {"suppress_tokens": [layout.pad_token_id]} if name == "t5" else {}
    expected = prompt_answer(model, processor, layout, fundus, QUESTION, max_new_tokens=20, **settings)
    assert expected  # a real answer to compare with

    model.train()  # the map is taken in eval mode (no dropout) and the mode is given back
    heatmap, answer = gradcam.gradcam_map(model, processor, fundus, QUESTION, generate_kwargs=settings)
    assert model.training
    assert answer == expected
    assert_unit_map(heatmap, (8, 8))  # 128 px / patch 16
    assert heatmap.std() > 0.05  # not constant

    other = Image.fromarray(np.asarray(fundus)[::-1, ::-1].copy())  # the same fundus, turned upside down
    other_map, _ = gradcam.gradcam_map(model, processor, other, QUESTION, generate_kwargs=settings)
    assert_unit_map(other_map, (8, 8))
    assert np.abs(heatmap - other_map).max() > 0.1  # the map depends on the image

    per_query, answer_again = gradcam.gradcam_map(
        model, processor, fundus, QUESTION, per_token=True, generate_kwargs=settings
    )
    assert per_query.shape == (layout.num_query_tokens, 8, 8) and answer_again == answer
    for query_map in per_query:
        assert_unit_map(query_map, (8, 8))
    assert model.qformer.config._attn_implementation == "sdpa"  # switched to eager for the pass only
    assert all(p.grad is None for p in model.parameters())


def test_blip2_gradcam_layers_attention_and_a_frozen_model(fundus):
    model, processor, layout = build("instructblip")
    # Tiny configs: 2 Q-Former layers, cross_attention_frequency 2: only the first looks at the image.
    assert gradcam.cross_attention_layers(model) == ([0], 2)
    with pytest.raises(ValueError, match=r"--layer 1 is out of range: 1 of the model's 2 layers"):
        gradcam.gradcam_map(model, processor, fundus, QUESTION, layer=1)
    own = StepRecorder()
    first, answer = gradcam.gradcam_map(model, processor, fundus, QUESTION, layer=0, generate_kwargs=own.kwargs)
    last, _ = gradcam.gradcam_map(model, processor, fundus, QUESTION)
    np.testing.assert_array_equal(first, last)

    # Frozen (as --freeze_qformer etc. leave it) and given eager attention: same map, settings kept. The answer is
    # generated with eager attention now: step by step as before up to float rounding (tests.same_answers), the
    # same text unless two tokens were near-tied, and then the maps explain different answers.
    model.set_attn_implementation("eager")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    eager = StepRecorder()
    frozen, frozen_answer = gradcam.gradcam_map(model, processor, fundus, QUESTION, generate_kwargs=eager.kwargs)
    assert agreeing_steps(own.steps(), eager.steps(), tolerance=1e-3) > 0  # ~1e-6 apart here
    assert frozen_answer == answer or own.smallest_margin() <= CLEAR
    if frozen_answer == answer:
        np.testing.assert_allclose(frozen, last, atol=1e-5)
    assert model.qformer.config._attn_implementation == "eager" and not model.training
    assert all(p.grad is None for p in model.parameters())


def test_blip2_gradcam_depends_on_the_cross_attention_gradient(fundus):
    model, processor, _ = build("opt")
    normal, answer = gradcam.gradcam_map(model, processor, fundus, QUESTION)

    def zero_gradient(module, args, output):
        if output[1] is not None and output[1].requires_grad:
            output[1].register_hook(torch.zeros_like)

    attention = model.qformer.encoder.layer[0].crossattention.attention
    handle = attention.register_forward_hook(zero_gradient)
    try:
        blocked, blocked_answer = gradcam.gradcam_map(model, processor, fundus, QUESTION)
    finally:
        handle.remove()
    assert blocked_answer == answer
    assert normal.std() > 0 and np.all(blocked == 0)  # no positive gradient, no evidence


@pytest.mark.parametrize("family", ["blip", "opt", "t5"])
def test_gradcam_explains_a_given_answer(family, tiny_processor, fundus):
    """`answer=` (a ranked answer, which greedy generation need not give) is explained as given: no generation
    (its settings change nothing), and each answer has its own map."""
    if family == "blip":
        model, processor = make_tiny_model(), tiny_processor
    else:
        model, processor, _ = build(family)
        model.config.prompt_template = PROMPT
    maps = {}
    for candidate in ("severe dr", "healthy retina"):
        heatmap, answer = gradcam.gradcam_map(model, processor, fundus, QUESTION, answer=candidate)
        assert answer == candidate
        assert_unit_map(heatmap, (8, 8))
        again, _ = gradcam.gradcam_map(model, processor, fundus, QUESTION, answer=candidate, max_new_tokens=1)
        assert np.array_equal(again, heatmap)
        maps[candidate] = heatmap
    _, own = gradcam.gradcam_map(model, processor, fundus, QUESTION, max_new_tokens=1)
    assert own not in maps  # one generated token is no candidate: the maps above did not come from generation
    assert np.abs(maps["severe dr"] - maps["healthy retina"]).max() > 0.05
