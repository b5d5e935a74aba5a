"""--image_loss_weight: the image-level objective's classes, its loss, and a run that trains, resumes and hands over
a plain BLIP."""

from __future__ import annotations

import json
import math
import sys

import datasets
import pytest
import torch
from safetensors import safe_open

from ..helpers import ROOT, TINY_CONFIG, common_args

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402
from retina_vqa.answering.candidates import AnswerCandidates
from retina_vqa.arguments import parse_args
from retina_vqa.training.image_objective import (
    HEAD_NAME,
    IGNORE,
    ImageAnswerHead,
    ImageTargets,
    attach_image_head,
    detach_image_head,
    image_states_of,
)

CANDIDATES = AnswerCandidates(
    answers={
        "abnormality": ["yes", "no"],
        "diagnosis": ["healthy retina", "mild dr", "moderate dr"],
        "report": ["small haemorrhages in the upper quadrant"],
        "cause": ["diabetes", "hypertension"],
    },
    closed={"abnormality": True, "diagnosis": True, "report": False, "cause": False},
    questions={"is there any abnormality?": "abnormality", "what is the diagnosis?": "diagnosis"},
)


def test_classes_are_the_answers_of_closed_types_and_rows_map_to_their_own_type():
    targets = ImageTargets.from_candidates(CANDIDATES)
    assert targets.types == ("abnormality", "diagnosis")  # open types (report, cause) have no classes
    assert targets.classes == (
        ("abnormality", "yes"),
        ("abnormality", "no"),
        ("diagnosis", "healthy retina"),
        ("diagnosis", "mild dr"),
        ("diagnosis", "moderate dr"),
    )
    assert targets.class_types().tolist() == [0, 0, 1, 1, 1]
    rows = targets.targets(
        CANDIDATES,
        ["Is there any abnormality?", "what is the diagnosis?", "what is the diagnosis?", "why?", "x"],
        ["No", "moderate DR", "proliferative dr", "diabetes", "yes"],
        [None, "diagnosis", "diagnosis", "cause", None],
    )
    # By wording when the type is missing; an answer outside the list, an open type, an unknown question: none.
    assert rows == [1, 4, -100, -100, -100]


def test_a_split_without_closed_rows_is_refused_with_the_fix():
    data = datasets.Dataset.from_dict({"question": ["why?"], "answer": ["diabetes"], "question_type": ["cause"]})
    args = type(
        "Args", (), {"question_column": "question", "answer_column": "answer", "question_type_column": "question_type"}
    )
    with pytest.raises(ValueError, match="--image_loss_weight needs training rows whose question type is closed"):
        ImageTargets.from_candidates(CANDIDATES).add_to(data, CANDIDATES, args)


def test_every_row_carries_its_images_answers_to_each_closed_type():
    targets = ImageTargets.from_candidates(CANDIDATES)
    # Rows of two images: image "a" asks abnormality (no) and diagnosis (mild); "b" asks diagnosis twice, disagreeing.
    rows = [1, 3, IGNORE, 2, 4]
    keys = ["a", "a", "a", "b", "b"]
    assert targets.image_labels(rows, keys) == [[1, 3], [1, 3], [1, 3], [IGNORE, IGNORE], [IGNORE, IGNORE]]
    assert targets.image_labels(rows, None) == [[1, IGNORE], [IGNORE, 3], [IGNORE, IGNORE], [IGNORE, 2], [IGNORE, 4]]


def test_each_label_competes_among_its_own_types_answers_only():
    torch.manual_seed(0)
    targets = ImageTargets.from_candidates(CANDIDATES)
    head = ImageAnswerHead(8, targets.class_types(), weight=2.0)
    states = torch.randn(2, 5, 8)  # two distinct images
    image_index = torch.tensor([0, 1, 1])
    labels = torch.tensor([[1, 3], [0, IGNORE], [0, IGNORE]])  # image 0: "no", "mild dr"; image 1: "yes"
    loss = head.loss(states, labels, image_index, num_items_in_batch=10)
    logits = head(states)[image_index]

    def ce(row, columns, target):
        return torch.nn.functional.cross_entropy(logits[row : row + 1, columns], torch.tensor([target]))

    expected = ce(0, slice(0, 2), 1) + ce(0, slice(2, 5), 1) + 2 * ce(1, slice(0, 2), 0)
    assert torch.allclose(loss, 2.0 * expected / 10)
    assert torch.allclose(head.loss(states, labels, image_index), 2.0 * expected / 4)  # without num_items: the mean
    loss.backward()
    assert head.classifier.weight.grad.abs().sum() > 0
    none = head.loss(states, torch.full((3, 2), IGNORE), image_index)
    assert none.item() == 0.0 and none.requires_grad


def test_the_encoders_states_of_a_forward_are_caught_and_a_step_without_them_is_an_error():
    from transformers import AutoConfig

    from retina_vqa.models.blip import SharedImageBlipForQuestionAnswering, encode_images

    torch.manual_seed(0)
    model = SharedImageBlipForQuestionAnswering(AutoConfig.from_pretrained(TINY_CONFIG)).eval()
    head = attach_image_head(model, ImageTargets.from_candidates(CANDIDATES), weight=1.0)
    assert getattr(model, HEAD_NAME) is head and head.classifier.in_features == 128
    pixel_values = torch.randn(2, 3, 128, 128)
    inputs = {
        "input_ids": torch.tensor([[2, 10, 3], [2, 11, 3], [2, 11, 3]]),
        "decoder_input_ids": torch.tensor([[5, 20, 3]] * 3),
        "labels": torch.tensor([[-100, 20, 3]] * 3),
        "pixel_values": pixel_values,
        "image_index": torch.tensor([0, 1, 1]),
    }
    with torch.no_grad(), image_states_of(model) as states:
        model(**inputs)
        expected = encode_images(model, pixel_values)
    assert torch.equal(states.value, expected)  # one entry per distinct image, [CLS] first
    with pytest.raises(RuntimeError, match="the image encoder did not run"), image_states_of(model):
        pass
    assert len(model.vision_model._forward_hooks) == 0  # the hook never outlives the step
    assert detach_image_head(model) and not hasattr(model, HEAD_NAME) and not detach_image_head(model)


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="--image_loss_weight must be 0"):
        parse_args(["--output_dir", "x", "--dataset_dir", "d", "--image_loss_weight", "-1"])


@pytest.mark.e2e
@pytest.mark.parametrize("config", ["blip-tiny", "blip2-opt-tiny"])
def test_a_run_trains_with_the_objective_resumes_it_and_hands_over_the_plain_model(config, tiny_dataset_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering

    output_dir = tmp_path / "out"
    args = common_args(tiny_dataset_dir, output_dir)
    args[args.index("--config_name") + 1] = str(ROOT / "configs" / config)
    args += [
        "--do_train", "--image_loss_weight", "1.0", "--max_steps", "2", "--save_steps", "1", "--save_strategy",
        "steps", "--plot", "false",
    ]  # fmt: skip
    results = run_vqa.main(args)
    assert math.isfinite(results["train_loss"])
    with safe_open(str(output_dir / "checkpoint-2" / "model.safetensors"), "pt") as f:
        checkpoint_keys = set(f.keys())
    with safe_open(str(output_dir / "model.safetensors"), "pt") as f:
        model_keys = set(f.keys())
    head_keys = {k for k in checkpoint_keys if k.startswith(HEAD_NAME)}
    assert head_keys == {f"{HEAD_NAME}.classifier.weight", f"{HEAD_NAME}.classifier.bias"}
    assert model_keys == checkpoint_keys - head_keys
    auto = AutoModelForVisualQuestionAnswering if config == "blip-tiny" else AutoModelForImageTextToText
    _, info = auto.from_pretrained(output_dir, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]

    def head_weight(step: int) -> torch.Tensor:
        with safe_open(str(output_dir / f"checkpoint-{step}" / "model.safetensors"), "pt") as f:
            return f.get_tensor(f"{HEAD_NAME}.classifier.weight")

    first, second = head_weight(1), head_weight(2)
    assert not torch.equal(first, second)  # the head trains

    # Resumed from checkpoint-1, with its head: step 2 again, to the same head as the uninterrupted run.
    resumed = run_vqa.main(args + ["--resume_from_checkpoint", str(output_dir / "checkpoint-1")])
    assert math.isfinite(resumed["train_loss"])
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert torch.allclose(head_weight(2), second, atol=1e-6)
