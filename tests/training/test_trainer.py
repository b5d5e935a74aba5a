"""Trainer behaviour the recipe promises: stops on a non-finite loss, keeps the best checkpoint."""

from __future__ import annotations

import json
import sys

import pytest

from ..conftest import ROOT
from ..test_run_vqa import common_args

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402


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
