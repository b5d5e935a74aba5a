"""--patch_dropout: which tokens are kept, in training mode only; a run drops them and resumes the same draws."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ..helpers import ROOT, common_args, make_tiny_model

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402
from retina_vqa.arguments import parse_args
from retina_vqa.training.patch_dropout import attach_patch_dropout, detach_patch_dropout, drop_patches


def test_cls_and_a_random_part_of_each_images_patches_are_kept_in_order():
    torch.manual_seed(0)
    tokens = torch.arange(3 * 9, dtype=torch.float).reshape(3, 9, 1).expand(3, 9, 4).clone()  # [CLS] + 8 patches
    kept = drop_patches(tokens, 0.5)
    assert kept.shape == (3, 5, 4)
    for image in range(3):
        rows = kept[image, :, 0].long().tolist()
        assert rows[0] == tokens[image, 0, 0]  # [CLS] first
        assert rows == sorted(rows) and len(set(rows)) == 5  # distinct patches, original order
        assert set(rows) <= set(tokens[image, :, 0].long().tolist())
    assert len({tuple(kept[i, 1:, 0].long().tolist()) for i in range(3)}) > 1  # images draw their own patches
    assert drop_patches(tokens, 0.99).shape == (3, 2, 4)  # at least one patch
    assert drop_patches(tokens, 0.01) is tokens  # rounds to every patch: nothing to drop


@pytest.mark.parametrize("config", ["blip-tiny", "blip2-opt-tiny"])
def test_the_image_encoder_sees_fewer_tokens_in_training_mode_only(config):
    if config == "blip-tiny":
        model = make_tiny_model(init_range=0.02)
    else:
        from transformers import AutoConfig, AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(ROOT / "configs" / config))
    pixels = torch.randn(2, 3, 128, 128)
    full = model.vision_model(pixel_values=pixels).last_hidden_state.shape[1]
    attach_patch_dropout(model, 0.75)
    model.train()
    states = model.vision_model(pixel_values=pixels).last_hidden_state
    assert states.shape[1] == 1 + round((full - 1) * 0.25)
    states.sum().backward()
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    model.eval()
    assert model.vision_model(pixel_values=pixels).last_hidden_state.shape[1] == full
    model.train()
    assert detach_patch_dropout(model) and not detach_patch_dropout(model)
    assert model.vision_model(pixel_values=pixels).last_hidden_state.shape[1] == full


@pytest.mark.parametrize("rate", ["1.0", "-0.1"])
def test_a_rate_outside_0_1_is_refused(rate):
    with pytest.raises(ValueError, match="--patch_dropout is the fraction"):
        parse_args(["--output_dir", "x", "--dataset_dir", "d", "--patch_dropout", rate])


def test_patch_dropout_with_kept_image_encoder_outputs_is_refused(tiny_dataset_dir, tmp_path):
    args = common_args(tiny_dataset_dir, tmp_path / "out") + ["--do_train", "--patch_dropout", "0.5"]
    args += ["--freeze_vision_encoder", "true", "--cache_image_embeddings", "true"]
    with pytest.raises(ValueError, match="--patch_dropout .* --cache_image_embeddings"):
        run_vqa.main(args)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _first_loss(output_dir) -> float:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return next(entry["loss"] for entry in history if "loss" in entry)


@pytest.mark.e2e
def test_a_run_drops_patches_and_a_resumed_run_draws_the_same_ones(tiny_dataset_dir, tmp_path):
    def run(name: str, *extra: str) -> tuple[dict, Path]:
        output_dir = tmp_path / name
        args = common_args(tiny_dataset_dir, output_dir)
        args += ["--do_train", "--max_steps", "2", "--save_steps", "1", "--save_strategy", "steps", "--plot", "false"]
        return run_vqa.main(args + list(extra)), output_dir

    _, plain = run("plain")
    dropped_results, dropped = run("dropped", "--patch_dropout", "0.5")
    assert math.isfinite(dropped_results["train_loss"])
    assert _first_loss(dropped) != pytest.approx(_first_loss(plain), abs=1e-6)  # the first step saw other tokens

    # Resumed from checkpoint-1: step 2 draws the same patches, to the same weights as the uninterrupted run.
    second = load_file(str(dropped / "checkpoint-2" / "model.safetensors"))
    run("dropped", "--patch_dropout", "0.5", "--resume_from_checkpoint", str(dropped / "checkpoint-1"))
    resumed = load_file(str(dropped / "checkpoint-2" / "model.safetensors"))
    for name, weight in second.items():
        torch.testing.assert_close(resumed[name], weight, atol=1e-6, rtol=0)
