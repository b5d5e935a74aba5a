"""Trainer behaviour the recipe promises: stops on a non-finite loss, keeps the best checkpoint."""

from __future__ import annotations

import json
import sys

import pytest

from ..helpers import ROOT, common_args

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402
from retina_vqa.data.loading import load_dataset_dir


def test_non_finite_loss_stops_the_run_and_names_the_last_good_checkpoint(tiny_dataset_dir, tmp_path):
    output_dir = tmp_path / "out"
    # A learning rate this large with no clipping blows the weights up within a few steps.
    args = common_args(tiny_dataset_dir, output_dir) + [
        "--do_train",
        "--max_steps",
        "30",
        "--save_steps",
        "1",
        "--learning_rate",
        "1e12",
        "--max_grad_norm",
        "0",
        "--warmup_steps",
        "0",
        "--lr_scheduler_type",
        "constant",
    ]
    with pytest.raises(FloatingPointError, match=r"at step (\d+).*Last good checkpoint: .*checkpoint-(\d+)") as error:
        run_vqa.main(args)
    message = str(error.value)
    bad_step = int(message.split("at step ")[1].split(";")[0])
    checkpoints = sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))
    assert checkpoints and max(checkpoints) == bad_step - 1  # nothing saved after the loss went bad
    assert f"checkpoint-{bad_step - 1}" in message
    state = json.loads((output_dir / f"checkpoint-{bad_step - 1}" / "trainer_state.json").read_text())
    assert all(entry["loss"] == entry["loss"] for entry in state["log_history"] if "loss" in entry)


@pytest.mark.e2e
def test_save_total_limit_never_deletes_the_best_checkpoint(tiny_dataset_dir, tmp_path):
    output_dir = tmp_path / "out"
    args = common_args(tiny_dataset_dir, output_dir) + [
        "--do_train",
        "--do_eval",
        "--max_steps",
        "8",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
        "--save_total_limit",
        "1",
        "--load_best_model_at_end",
        "--metric_for_best_model",
        "eval_loss",
        "--max_eval_samples",
        "13",
    ]
    run_vqa.main(args)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    assert best is not None
    kept = sorted(p.name for p in output_dir.glob("checkpoint-*"))
    assert best.split("/")[-1] in kept
    losses = {e["step"]: e["eval_loss"] for e in state["log_history"] if "eval_loss" in e}
    assert int(best.split("-")[-1]) == min(losses, key=losses.get)


def _training_losses(output_dir) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.e2e
def test_torch_compile_traces_one_graph_for_batches_of_every_shape(tiny_dataset_dir, tmp_path):
    # Dynamic padding and image sharing change the batch shapes every step. The compiled model must not
    # recompile for each (the sizes are marked dynamic up front), break its graph, or change the training.
    # The "aot_eager" backend runs dynamo and autograd tracing like inductor, without C++ code generation.
    import torch._dynamo
    from torch._dynamo.utils import counters

    def run(name: str, *extra: str):
        output_dir = tmp_path / name
        # Batches of 16 rows always hold two or more images (13 questions each): sizes of 1 would be specialised.
        args = common_args(tiny_dataset_dir, output_dir) + ["--do_train", "--max_steps", "6", *extra]
        args += ["--per_device_train_batch_size", "16"]
        run_vqa.main(args)
        return output_dir

    eager = run("eager")
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = run("compiled", "--torch_compile", "true", "--torch_compile_backend", "aot_eager")
        graphs, frames, breaks = (
            counters["stats"]["unique_graphs"],
            counters["frames"]["total"],
            dict(counters["graph_break"]),
        )
    finally:
        torch._dynamo.reset()
    losses = _training_losses(eager)
    assert len(losses) == 6 and len({round(x, 3) for x in losses}) > 1
    assert graphs == 1 and frames == 1 and not breaks, (graphs, frames, breaks)
    assert _training_losses(compiled) == pytest.approx(losses, rel=1e-4)
    # Saved without torch.compile's wrapper: plain transformers loads it.
    from transformers import AutoModelForVisualQuestionAnswering

    AutoModelForVisualQuestionAnswering.from_pretrained(compiled)
    assert "_orig_mod" not in (compiled / "model.safetensors").read_bytes()[:100_000].decode("latin-1")


def _trainer(tiny_dataset_dir, tmp_path, **overrides):
    """A VqaTrainer over the prepared tiny training split, as run_vqa.py builds it (no training run)."""

    from retina_vqa.arguments import DataTrainingArguments, ModelArguments, VqaTrainingArguments
    from retina_vqa.data.collator import VqaCollator
    from retina_vqa.data.preprocessing import prepare_split
    from retina_vqa.training.model_setup import load_model, load_processor
    from retina_vqa.training.trainer import VqaTrainer

    from ..helpers import TINY_CONFIG

    model_args = ModelArguments(model_name_or_path="", config_name=str(TINY_CONFIG))
    data_args = DataTrainingArguments(dataset_dir=str(tiny_dataset_dir))
    settings = {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8, "report_to": "none"}
    args = VqaTrainingArguments(**{**settings, **overrides})
    processor = load_processor(model_args)
    train = load_dataset_dir(str(tiny_dataset_dir))["train"]
    prepared = prepare_split(train, processor.tokenizer, data_args, with_answers=True, description="train")
    collator = VqaCollator(processor.image_processor, processor.tokenizer.pad_token_id, return_image_keys=True)
    model = load_model(model_args, processor)
    return VqaTrainer(model=model, args=args, train_dataset=prepared, eval_dataset=prepared, data_collator=collator)


def _images_per_batch(trainer) -> list[int]:
    return [len(batch["image_keys"]) for batch in trainer.get_train_dataloader()]


def test_the_trainers_train_dataloader_groups_questions_by_image(tiny_dataset_dir, tmp_path):
    """Through the Trainer's own dataloader (the sampler hook, not the sampler alone): 6 images x 13 questions in
    batches of 8. All of an image's questions together: a batch spans at most 2 images; runs of at most 4: about
    2-3 images; random order: most of 8."""
    grouped = _images_per_batch(_trainer(tiny_dataset_dir, tmp_path, max_questions_per_image=0))
    bounded = _images_per_batch(_trainer(tiny_dataset_dir, tmp_path, max_questions_per_image=4))
    shuffled = _images_per_batch(_trainer(tiny_dataset_dir, tmp_path, group_by_image=False))
    assert len(grouped) == len(bounded) == len(shuffled) == 10  # 78 rows / 8
    assert max(grouped) <= 2
    assert 2 <= sum(bounded) / len(bounded) <= 4
    assert sum(shuffled) / len(shuffled) > 4


def test_evaluation_without_generation_keeps_no_per_question_outputs(tiny_dataset_dir, tmp_path):
    trainer = _trainer(tiny_dataset_dir, tmp_path, predict_with_generate=False, per_device_eval_batch_size=16)
    output = trainer.predict(trainer.eval_dataset.select(range(40)))
    assert output.predictions is None and output.label_ids is None
    assert output.metrics["test_loss"] > 0


def test_evaluation_runs_in_dataset_order_whatever_the_training_sampling(tiny_dataset_dir, tmp_path):
    """transformers groups evaluation rows by length under group_by_length; the recipe pairs outputs with rows by
    position (metrics on the raw answers, ranking plan, predictions.jsonl), so its evaluation order is the dataset's."""
    trainer = _trainer(tiny_dataset_dir, tmp_path, train_sampling_strategy="group_by_length", group_by_image=False)
    sampler = trainer._get_eval_sampler(trainer.eval_dataset)
    assert list(sampler) == list(range(len(trainer.eval_dataset)))
    order = [i for batch in trainer.get_eval_dataloader() for i in batch["input_ids"][:, 1].tolist()]
    expected = [row["input_ids"][1] for row in trainer.eval_dataset]
    assert order == expected
