"""--augment end to end: training batches augmented, evaluation and prediction batches never."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from ..helpers import ROOT, common_args

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402
from retina_vqa.arguments import parse_args
from retina_vqa.data.augment import FundusAugmentation
from retina_vqa.data.collator import VqaCollator
from retina_vqa.training.trainer import VqaTrainer


def test_augment_trains_through_run_vqa_and_evaluation_batches_are_not_augmented(
    tiny_dataset_dir, tmp_path, monkeypatch
):
    calls: list[tuple[str, bool]] = []  # (phase, collator augments) per batch
    phase = ["train"]
    augmented_images = []
    collate, evaluation_loop, augment = VqaCollator.__call__, VqaTrainer.evaluation_loop, FundusAugmentation.__call__

    def recording_collate(self, features):
        calls.append((phase[0], self.augment is not None))
        return collate(self, features)

    def recording_evaluation_loop(self, *args, **kwargs):
        phase[0] = "evaluate"
        try:
            return evaluation_loop(self, *args, **kwargs)
        finally:
            phase[0] = "train"

    def recording_augment(self, image, flip_allowed=False):
        augmented_images.append(phase[0])
        return augment(self, image, flip_allowed)

    monkeypatch.setattr(VqaCollator, "__call__", recording_collate)
    monkeypatch.setattr(VqaTrainer, "evaluation_loop", recording_evaluation_loop)
    monkeypatch.setattr(FundusAugmentation, "__call__", recording_augment)
    output_dir = tmp_path / "out"
    args = common_args(tiny_dataset_dir, output_dir) + [
        "--do_train", "--do_eval", "--do_predict", "--augment", "--max_steps", "2",
        "--max_eval_samples", "13", "--max_predict_samples", "13", "--plot", "false",
    ]  # fmt: skip
    results = run_vqa.main(args)

    training = [augments for where, augments in calls if where == "train"]
    evaluation = [augments for where, augments in calls if where == "evaluate"]
    assert len(training) >= 2 and all(training)  # two steps, both batches from the augmenting collator
    assert len(evaluation) >= 2 and not any(evaluation)  # evaluation and prediction: the plain collator
    assert augmented_images and set(augmented_images) == {"train"}
    assert math.isfinite(results["train_loss"])
    assert json.loads((output_dir / "all_results.json").read_text())["eval_samples"] == 13


def test_the_trainer_builds_training_batches_with_its_training_collator_only(tiny_dataset_dir, tmp_path):
    from .test_trainer import _trainer

    trainer = _trainer(tiny_dataset_dir, tmp_path)
    plain = trainer.data_collator
    trainer.train_data_collator = VqaCollator(
        plain.image_processor, plain.pad_token_id, return_image_keys=True, augment=FundusAugmentation(seed=0)
    )
    train_loader = trainer.get_train_dataloader()
    eval_loader = trainer.get_eval_dataloader()
    assert train_loader.collate_fn is trainer.train_data_collator
    assert eval_loader.collate_fn is plain and trainer.data_collator is plain
    # The evaluation pixels are those of the images as stored; the training ones are not.
    eval_batch = next(iter(eval_loader))
    rows = [trainer.eval_dataset[i] for i in range(len(eval_batch["input_ids"]))]
    assert torch.equal(eval_batch["pixel_values"], plain(rows)["pixel_values"])
    train_batch = next(iter(train_loader))
    keys = train_batch["image_keys"]
    rows = [next(r for r in trainer.train_dataset if r["image_key"] == k) for k in keys]
    unaugmented = plain(rows)["pixel_values"]
    assert not torch.equal(train_batch["pixel_values"], unaugmented)


def test_augment_with_cached_image_embeddings_is_refused(tiny_dataset_dir, tmp_path):
    args = common_args(tiny_dataset_dir, tmp_path / "out") + [
        "--do_train", "--augment", "--freeze_vision_encoder", "--cache_image_embeddings",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--augment.*--cache_image_embeddings"):
        parse_args(args)


def test_the_flip_probability_reaches_the_training_augmentation(tiny_dataset_dir, tmp_path):
    from retina_vqa.training.evaluation import build_train_collator

    base = common_args(tiny_dataset_dir, tmp_path / "out") + ["--do_train", "--augment"]
    for flag, expected in (([], 0.5), (["--augment_flip_probability", "0"], 0.0)):
        model_args, data_args, training_args = parse_args(base + flag)
        plain = VqaCollator(image_processor=None, pad_token_id=0)
        collator = build_train_collator(plain, data_args, training_args)
        assert collator.augment.flip_probability == expected
    with pytest.raises(ValueError, match="--augment_flip_probability must be between 0 and 1, got 1.5"):
        parse_args(base + ["--augment_flip_probability", "1.5"])
