"""retina_vqa.training.embedding_cache: a frozen image encoder runs once per image, and training does not change."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from retina_vqa.arguments import ModelArguments
from retina_vqa.inference import load_for_inference
from retina_vqa.models.blip import encode_images
from retina_vqa.training.embedding_cache import ImageEmbeddingCache

from ..helpers import ROOT, TINY_CONFIG, common_args, make_tiny_model
from ..same_answers import CLEAR, answers_alone

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402
from retina_vqa.data.loading import load_dataset_dir


def _counting(model):
    passes = []
    model.vision_model.register_forward_hook(lambda module, args, out: passes.append(out[0].shape[0]))
    return passes


def test_kept_outputs_equal_fresh_ones_and_only_new_images_are_encoded():
    model = make_tiny_model()
    passes = _counting(model)
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        expected = encode_images(model, pixels)
    passes.clear()
    cache = ImageEmbeddingCache(max_bytes=10**9)
    assert torch.equal(cache.encode(model, pixels, ["a", "b", "c"]), expected)
    assert passes == [3]
    # Two kept, one new: only the new image goes through the encoder, in the batch's order.
    fresh = torch.randn(1, 3, 128, 128)
    batch = torch.cat([pixels[2:3], fresh, pixels[0:1]])
    out = cache.encode(model, batch, ["c", "d", "a"])
    with torch.no_grad():
        assert torch.equal(out[1], encode_images(model, fresh)[0])
    assert torch.equal(out[0], expected[2]) and torch.equal(out[2], expected[0])
    assert passes[1] == 1
    assert cache.stats()["image_encoder_passes_saved"] == 2 and cache.stats()["image_encoder_passes"] == 4
    assert len(cache) == 4 and not out.requires_grad


def _three_images():
    """A model, three images, their encoder outputs, and the bytes one output takes."""
    model = make_tiny_model()
    pixels = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        expected = encode_images(model, pixels)
    return model, pixels, expected, expected[0].numel() * expected[0].element_size()


def test_memory_bound_keeps_what_fits_and_stays_correct():
    model, pixels, expected, one_image = _three_images()
    cache = ImageEmbeddingCache(max_bytes=one_image)
    assert torch.equal(cache.encode(model, pixels, ["a", "b", "c"]), expected)
    assert len(cache) == 1 and cache.full
    # b, c encoded again, as a batch of two: equal to their batch-of-three outputs up to float rounding (another
    # image's outputs would be off by their whole scale); a, kept, exactly.
    again = cache.encode(model, pixels, ["a", "b", "c"])
    assert torch.equal(again[0], expected[0])
    torch.testing.assert_close(again, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert cache.stats()["image_encoder_passes_saved"] == 1


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="add --freeze_vision_encoder"):
        ModelArguments(model_name_or_path="", config_name=str(TINY_CONFIG), cache_image_embeddings=True)
    with pytest.raises(ValueError, match="2 image keys for 3 images"):
        ImageEmbeddingCache(10**6).encode(make_tiny_model(), torch.randn(3, 3, 128, 128), ["a", "b"])
    with pytest.raises(ValueError, match="positive size"):
        ImageEmbeddingCache(0)


@pytest.mark.e2e
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_with_kept_outputs_equals_training_without(tiny_dataset_dir, tmp_path, precision):
    # In bf16 the kept outputs come from mixed-precision passes and are read back by a bf16 forward and by
    # generation: both must run (no dtype clash) and train and evaluate as without the cache.
    def run(name: str, *extra: str) -> dict:
        output_dir = tmp_path / name
        args = common_args(tiny_dataset_dir, output_dir) + ["--do_train", "--do_eval", "--num_train_epochs", "3"]
        args += ["--bf16", "true", "--use_cpu", "true"] if precision == "bf16" else []
        args += ["--freeze_vision_encoder", "true", "--eval_strategy", "epoch", "--plot", "false", *extra]
        results = run_vqa.main(args)
        state = json.loads((output_dir / "trainer_state.json").read_text())
        results["losses"] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        return results

    plain = run("plain")
    cached = run("cached", "--cache_image_embeddings", "true")
    assert len(plain["losses"]) == 30 and len({round(x, 3) for x in plain["losses"]}) > 1
    assert cached["losses"] == pytest.approx(plain["losses"], rel=1e-5, abs=1e-6)
    # The same weights, evaluated from kept or fresh image-encoder outputs (computed in other batches): the same
    # answers wherever the choices are clear of float rounding (tests.same_answers; bf16: of its unit roundoff,
    # 4e-3), so exact match moves by at most one row for each validation answer that is not (none in fp32 here).
    model, processor = load_for_inference(tmp_path / "plain", device="cpu")
    validation = load_dataset_dir(str(tiny_dataset_dir))["validation"]
    _, margins = answers_alone(model, processor, validation["image"], validation["question"], max_new_tokens=11)
    unclear = sum(margin <= (1e-2 if precision == "bf16" else CLEAR) for margin in margins)
    assert abs(cached["eval_exact_match"] - plain["eval_exact_match"]) <= unclear / len(margins), unclear
    assert cached["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-5)
    # 6 training + 3 validation images, each encoded once over 3 epochs and 3 evaluations.
    assert cached["image_encoder_passes"] == 9 and cached["image_embeddings_kept"] == 9
    assert cached["image_encoder_passes_saved"] > 2 * 9
    assert "image_encoder_passes" not in plain


def test_evicting_cache_drops_the_oldest_outputs():
    model, pixels, expected, one_image = _three_images()
    cache = ImageEmbeddingCache(max_bytes=2 * one_image, evict=True)
    assert torch.equal(cache.encode(model, pixels, ["a", "b", "c"]), expected)
    assert list(cache.stored) == ["b", "c"] and cache.bytes == 2 * one_image and not cache.full


def test_the_cache_is_refused_when_any_image_encoder_parameter_trains(tmp_path):
    """The guard reads the parameters that train, not the flags: a LoRA adapter (or anything else) left training
    inside a 'frozen' image encoder would make the kept outputs stale."""
    from peft import LoraConfig, get_peft_model

    from retina_vqa.arguments import VqaTrainingArguments
    from retina_vqa.models.blip import freeze
    from retina_vqa.training.trainer import VqaTrainer

    args = VqaTrainingArguments(output_dir=str(tmp_path), report_to="none")
    model = make_tiny_model()
    freeze(model, vision_model=True)
    VqaTrainer(model=model, args=args, image_embedding_cache=ImageEmbeddingCache(10**6))  # frozen: accepted
    adapted = get_peft_model(make_tiny_model(), LoraConfig(r=2, target_modules=["qkv", "query"]))
    with pytest.raises(ValueError, match=r"--cache_image_embeddings .* of its parameters train \(.*vision_model"):
        VqaTrainer(model=adapted, args=args, image_embedding_cache=ImageEmbeddingCache(10**6))


def test_lora_with_a_frozen_image_encoder_and_kept_outputs_adapts_the_text_side_only(tiny_dataset_dir, tmp_path):
    from safetensors.torch import load_file

    from ..helpers import fine_tune_args

    output_dir = tmp_path / "out"
    args = fine_tune_args(tiny_dataset_dir, output_dir, tmp_path / "start", make_tiny_model(init_range=0.5))
    args += ["--do_train", "--max_steps", "3", "--lora_r", "4", "--freeze_vision_encoder", "true"]
    results = run_vqa.main(args + ["--cache_image_embeddings", "true", "--plot", "false", "--save_strategy", "no"])
    adapter = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and not [k for k in adapter if "vision_model" in k]
    assert any("text_encoder" in k for k in adapter) and any("text_decoder" in k for k in adapter)
    assert results["image_encoder_passes"] == 6  # each training image encoded once, then its kept outputs used
