"""A run pushed with --push_to_hub, loaded back by its repository id (the Hub cache, HF_HUB_OFFLINE=1), answers as the
run's predictions.jsonl: full fine-tuning and LoRA (merged, or as an adapter), BLIP and BLIP-2, checkpoint pushes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering, AutoProcessor

import run_vqa
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.inference import load_for_inference
from retina_vqa.models.blip2 import init_query_tokens

from ..helpers import ROOT, fine_tune_args, make_tiny_model, read_jsonl
from ..hub_cache import USER, LocalHub
from ..same_answers import answers_alone, assert_same_where_clear

PREDICTED = 13  # the test split's first image: every question type once
BLIP2 = ROOT / "configs" / "blip2-opt-tiny"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return LocalHub(tmp_path / "hub-cache").install(monkeypatch)


def _start_blip2():
    config = AutoConfig.from_pretrained(BLIP2)
    config.text_config.initializer_range, config.text_config.initializer_factor = 0.3, 3.0
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    init_query_tokens(model)
    return model


def _push_run(data_dir, tmp_path, family: str, repo: str, *flags: str) -> tuple:
    """Fine-tune a random start model of `family` for 4 steps, predict the first test image's questions, push to
    `repo`; (output folder, start folder, predictions)."""
    start, output_dir = tmp_path / "start", tmp_path / "out"
    if family == "blip":
        args = fine_tune_args(data_dir, output_dir, start, make_tiny_model(init_range=0.5))
    else:
        args = fine_tune_args(data_dir, output_dir, start, _start_blip2(), BLIP2)
    args += ["--do_train", "--do_predict", "--max_steps", "4", "--max_predict_samples", str(PREDICTED)]
    args += ["--plot", "false", "--push_to_hub", "--hub_model_id", repo, *flags]
    run_vqa.main(args)
    return output_dir, start, [row["prediction"] for row in read_jsonl(output_dir / "predictions.jsonl")]


def _assert_answers_as_predicted(model_name_or_path: str, data_dir, predicted: list[str]) -> None:
    """The model loaded from `model_name_or_path` answers the run's rows as it predicted them: each question alone,
    compared wherever every choice is clear (the run batched them otherwise, and a near-tied random model's answers
    may flip with the rounding: `tests/same_answers.py`)."""
    test = load_dataset_dir(str(data_dir))["test"].select(range(PREDICTED))
    model, processor = load_for_inference(model_name_or_path, device="cpu")
    alone, margins = answers_alone(model, processor, list(test["image"]), list(test["question"]))
    assert_same_where_clear(predicted, alone, margins, at_least=PREDICTED // 2)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["blip", "blip-2"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_pushed_model_loads_by_repo_id_and_answers_as_the_run_predicted(family, lora, hub, tiny_dataset_dir, tmp_path):
    repo = f"{USER}/{family}-{'lora' if lora else 'full'}"
    flags = ["--lora_r", "4", "--learning_rate", "1e-2"] if lora else []
    output_dir, start, predicted = _push_run(tiny_dataset_dir, tmp_path, family, repo, *flags)

    # The repository holds one full model, nothing that points at another: no adapter, no adapter/ copy.
    files = hub.paths(repo)
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= files
    assert "answer_candidates.json" in files and "processor_config.json" in files
    assert not any(path.startswith(("adapter", "checkpoint-")) for path in files), sorted(files)
    # By repository id, through the cache a download fills: the run's answers, with either loader.
    _assert_answers_as_predicted(repo, tiny_dataset_dir, predicted)
    auto = AutoModelForVisualQuestionAnswering if family == "blip" else AutoModelForImageTextToText
    plain = auto.from_pretrained(repo)
    assert type(plain).__name__ == ("BlipForQuestionAnswering" if family == "blip" else "Blip2ForConditionalGeneration")
    # ... and it is the trained model, not the start: with LoRA, the adapted layers moved and nothing else did.
    trained, started = _weights(plain), _weights(auto.from_pretrained(start))
    moved = {k for k in trained if not torch.equal(trained[k], started[k])}
    assert moved
    if lora:
        assert all(
            k.endswith(".weight") and any(n in k for n in ("qkv", "query", "value", "q_proj", "v_proj")) for k in moved
        ), moved
    assert json.loads((hub.snapshot(repo) / "config.json").read_text())["architectures"] == [type(plain).__name__]
    # The card is the project's: the repository id in its usage snippet, the grading metrics.
    card = (hub.snapshot(repo) / "README.md").read_text()
    assert f'from_pretrained("{repo}")' in card and "library_name: transformers" in card
    assert "retina-vqa" in card and "Exact match per question type" in card
    # The local folder is what was pushed.
    assert (
        load_file(output_dir / "model.safetensors").keys() == load_file(hub.snapshot(repo) / "model.safetensors").keys()
    )


def test_lora_checkpoint_pushes_then_the_merged_model_replaces_their_adapter(hub, tiny_dataset_dir, tmp_path):
    """--hub_strategy checkpoint: every save pushes the adapter to the top of the repository (and the checkpoint to
    last-checkpoint/); the final push replaces it with the merged model in the same repository."""
    repo = f"{USER}/blip-lora-checkpoints"
    flags = ["--lora_r", "4", "--learning_rate", "1e-2", "--save_strategy", "steps", "--save_steps", "2"]
    _, _, predicted = _push_run(tiny_dataset_dir, tmp_path, "blip", repo, *flags, "--hub_strategy", "checkpoint")
    messages = hub.commits[repo]
    assert any("step 2" in m for m in messages) and messages[-1] == "End of training"
    files = hub.paths(repo)
    assert "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    assert "last-checkpoint/adapter_config.json" in files  # the checkpoint to resume from stays a checkpoint
    assert "model.safetensors" in files
    _assert_answers_as_predicted(repo, tiny_dataset_dir, predicted)


def test_unmerged_lora_pushes_an_adapter_repo_that_loads_onto_its_base(hub, tiny_dataset_dir, tmp_path):
    repo = f"{USER}/blip-adapter"
    flags = ["--lora_r", "4", "--learning_rate", "1e-2", "--merge_lora", "false"]
    output_dir, start, predicted = _push_run(tiny_dataset_dir, tmp_path, "blip", repo, *flags)
    files = hub.paths(repo)
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "generation_config.json"} <= files
    assert "model.safetensors" not in files and not any("/" in p for p in files)
    adapter = json.loads((hub.snapshot(repo) / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(start)
    card = (hub.snapshot(repo) / "README.md").read_text()
    assert "library_name: peft" in card and f"base_model: {start}" in card and "LoRA adapter" in card
    # Plain transformers (with peft installed) loads base + adapter from the repository id; so does the project.
    _assert_answers_as_predicted(repo, tiny_dataset_dir, predicted)
    plain = AutoModelForVisualQuestionAnswering.from_pretrained(repo)
    assert any("lora_A" in name for name, _ in plain.named_parameters())
    # The project loads the repository's own config over the base's weights, and names the repository as the model.
    loaded, _ = load_for_inference(repo, device="cpu")
    assert loaded.name_or_path == repo and loaded.config.text_config.vocab_size == plain.config.text_config.vocab_size
    # The local folder holds the same adapter layout.
    assert (output_dir / "adapter_config.json").exists() and not (output_dir / "model.safetensors").exists()


def test_an_adapter_push_of_a_resized_model_is_refused_before_training(tiny_dataset_dir, tmp_path):
    args = fine_tune_args(tiny_dataset_dir, tmp_path / "out", tmp_path / "start", make_tiny_model())
    args += ["--do_train", "--lora_r", "4", "--merge_lora", "false", "--push_to_hub", "--image_size", "96"]
    with pytest.raises(ValueError, match="--image_size 96 changes its image encoder"):
        run_vqa.main(args)
    assert not (tmp_path / "out").exists()


def test_processor_of_a_pushed_model_truncates_as_training_did(hub, tiny_dataset_dir, tmp_path):
    repo = f"{USER}/blip-processor"
    _push_run(tiny_dataset_dir, tmp_path, "blip", repo, "--max_question_length", "12")
    assert AutoProcessor.from_pretrained(repo).tokenizer.model_max_length == 12


def test_the_guard_and_operating_points_of_a_pushed_model_are_found_by_repo_id(hub, tiny_dataset_dir, tmp_path):
    from huggingface_hub import HfApi

    from retina_vqa.metrics.screening import OperatingPoint, find_operating_points, save_operating_points
    from retina_vqa.ood import OODGuard, find_ood_guard, model_feature_size

    repo = f"{USER}/blip-extras"
    output_dir, _, _ = _push_run(tiny_dataset_dir, tmp_path, "blip", repo)
    model, _ = load_for_inference(repo, device="cpu")
    assert find_ood_guard(model) is None and find_operating_points(repo) is None  # none saved with it yet
    size = model_feature_size(model)
    torch.manual_seed(0)
    guard = OODGuard.fit(torch.randn(64, size), torch.randn(32, size), 99.0)
    points = [OperatingPoint("high_sensitivity", 0.9, 0.25, 0.92, 0.6)]
    guard.save(output_dir)
    save_operating_points(points, output_dir)
    HfApi().upload_folder(repo_id=repo, folder_path=str(output_dir), commit_message="guard and operating points")
    model, _ = load_for_inference(repo, device="cpu")
    found = find_ood_guard(model)
    assert found is not None and found.threshold == pytest.approx(guard.threshold)
    assert find_operating_points(repo) == points
