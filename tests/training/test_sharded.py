"""Sharded training on two CPU processes (FSDP2, DeepSpeed ZeRO-2): really sharded, resumable from its
checkpoints, a full model at the end, and the same answers as one process with those weights."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoProcessor

from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.inference import load_for_inference
from retina_vqa.training.checkpoints import is_complete

from ..helpers import ROOT, TINY_CONFIG, accelerate_launch, common_args, losses, make_tiny_model, read_jsonl
from ..same_answers import answers_alone, assert_same_where_clear

pytestmark = pytest.mark.e2e  # real processes / servers: left out of `make test-fast`

# accelerate runs an FSDP or DeepSpeed config on the CPU as DDP unless run_vqa intervenes: each case names the
# wrapper the run must log, and the checkpoint entry that only that engine writes.
ENGINES = {
    "fsdp2": ("cpu_fsdp2.yaml", "FSDP enabled True, model wrapped as FSDP", "pytorch_model_fsdp_0/.metadata"),
    "deepspeed_zero2": ("cpu_deepspeed_zero2.yaml", "model wrapped as DeepSpeedEngine", "global_step2"),
}


def run_args(data_dir, output_dir, model_dir) -> list[str]:
    args = common_args(data_dir, output_dir)
    args[args.index("--model_name_or_path") + 1] = str(model_dir)
    config = args.index("--config_name")
    del args[config : config + 2]
    return args + ["--learning_rate", "1e-4", "--max_predict_samples", "24"]


def launch(config: str, args: list[str]) -> str:
    """The run's log (our loggers write to stdout, warnings go to stderr)."""
    command = accelerate_launch(
        config, 29535, *args, "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "1"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout + completed.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_sharded_run_resumes_and_saves_a_full_model(engine, tiny_dataset_dir, tmp_path):
    if engine.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("pip install deepspeed to test DeepSpeed on the CPU")
    config, wrapped, checkpoint_entry = ENGINES[engine]
    # A wide init: answers that depend on the input, so that equal answers mean something. A raised [SEP] logit
    # ends some of them early: with one question a batch, the two processes stop decoding at different steps.
    start = tmp_path / "start"
    model = make_tiny_model()
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[model.config.text_config.sep_token_id] = 5.0
    model.save_pretrained(start)
    AutoProcessor.from_pretrained(TINY_CONFIG).save_pretrained(start)
    steps = ["--do_train", "--max_steps", "4", "--save_steps", "2"]

    straight = tmp_path / "straight"
    log = launch(config, run_args(tiny_dataset_dir, straight, start) + steps)
    assert log.count(wrapped) == 2, log[-3000:]
    assert "DDP" not in log
    checkpoint = straight / "checkpoint-2"
    assert (checkpoint / checkpoint_entry).exists()
    assert is_complete(str(checkpoint))

    # A run killed after its first checkpoint, restarted with the same command.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-2")
    # Marks the entries of steps 1-2 so that the resumed run shows it took its state from the checkpoint.
    state_file = resumed / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for entry in state["log_history"]:
        entry["from_checkpoint"] = True
    state_file.write_text(json.dumps(state))
    log = launch(config, run_args(tiny_dataset_dir, resumed, start) + steps + ["--do_predict"])
    assert "resuming training at" in log and "checkpoint-2" in log
    history = json.loads((resumed / "trainer_state.json").read_text())["log_history"]
    assert [entry.get("from_checkpoint", False) for entry in history if "loss" in entry] == [True] * 2 + [False] * 2
    # Steps 3 and 4 continue from the sharded weights and optimizer state exactly (from the start's weights,
    # or with a fresh optimizer, they would differ).
    assert losses(resumed) == losses(straight), (losses(resumed), losses(straight))

    # The final folder is a plain transformers model: one process loads it and answers as the two did.
    assert (resumed / "model.safetensors").is_file()
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, str(ROOT / "run_vqa.py"), *run_args(tiny_dataset_dir, single, resumed), "--do_predict"],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    sharded = [row["prediction"] for row in read_jsonl(resumed / "predictions.jsonl")]
    whole = [row["prediction"] for row in read_jsonl(single / "predictions.jsonl")]
    assert len(sharded) == 24 and len(set(sharded)) > 3 and min(map(len, sharded)) < 8, sharded  # some end early
    # One question a batch on two processes, 16 on one: the same answers wherever every choice is clear of float
    # rounding (tests.same_answers, from the saved model asking each question alone).
    model, processor = load_for_inference(resumed, device="cpu")
    test = load_dataset_dir(str(tiny_dataset_dir))["test"].select(range(24))
    alone, margins = answers_alone(model, processor, test["image"], test["question"], max_new_tokens=11)
    assert_same_where_clear(sharded, whole, margins, at_least=18)
    assert_same_where_clear(whole, alone, margins, at_least=18)
