"""Resuming: complete checkpoints only, and a run killed with SIGKILL resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from retina_vqa.training.checkpoints import is_complete, last_complete_checkpoint

from ..helpers import ROOT, common_args, fine_tune_args, make_tiny_model


def fake_checkpoint(output_dir, step: int, state: str | None = '{"global_step": STEP}', weights: bool = True):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "model.safetensors").write_bytes(b"x")
    if state is not None:
        (path / "trainer_state.json").write_text(state.replace("STEP", str(step)))
    return path


def test_half_written_checkpoints_are_never_picked(tmp_path):
    good = fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, state=None)  # killed before the trainer state was written
    fake_checkpoint(tmp_path, 6, state='{"global_st')  # killed while writing it
    fake_checkpoint(tmp_path, 8, weights=False)
    fake_checkpoint(tmp_path, 10, state='{"global_step": 9}')  # state of another step
    assert is_complete(str(good))
    assert last_complete_checkpoint(str(tmp_path)) == str(good)
    assert last_complete_checkpoint(str(tmp_path / "nothing")) is None


def test_a_sharded_fsdp_checkpoint_counts_once_its_shards_are_all_written(tmp_path):
    # fsdp_state_dict_type: SHARDED_STATE_DICT writes no safetensors, one torch.distributed.checkpoint folder.
    checkpoint = fake_checkpoint(tmp_path, 2, weights=False)
    shards = checkpoint / "pytorch_model_fsdp_0"
    shards.mkdir()
    (shards / "__0_0.distcp").write_bytes(b"x")
    assert not is_complete(str(checkpoint))  # .metadata comes after every rank's shard
    (shards / ".metadata").write_bytes(b"x")
    assert is_complete(str(checkpoint))


def command(data_dir, output_dir, start=None) -> list[str]:
    """The run to kill: from scratch, or (with `start`, a saved model) LoRA adapters on it."""
    steps = ["--do_train", "--max_steps", "8", "--save_steps", "2", "--seed", "3"]
    if start is None:
        args = common_args(data_dir, output_dir)
    else:
        args = fine_tune_args(data_dir, output_dir, start, make_tiny_model(init_range=0.5)) + ["--lora_r", "4"]
    return [sys.executable, str(ROOT / "run_vqa.py"), *args, *steps]


@pytest.mark.e2e
@pytest.mark.parametrize("lora", [False, True], ids=["weights", "lora_adapters"])
def test_sigkill_after_a_checkpoint_then_same_command_resumes_to_identical_weights(lora, tiny_dataset_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    straight = tmp_path / "straight"
    start = tmp_path / "start" if lora else None
    subprocess.run(command(tiny_dataset_dir, straight, start), env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command(tiny_dataset_dir, killed, start), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (killed / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists(), "killed too late: the run had finished"

    if lora:  # a checkpoint of adapters only (the frozen weights come from the start model again)
        assert (killed / "checkpoint-2" / "adapter_model.safetensors").exists()
        assert not (killed / "checkpoint-2" / "model.safetensors").exists()
    resumed = subprocess.run(
        command(tiny_dataset_dir, killed, start), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training at" in resumed.stdout + resumed.stderr
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    expected = load_file(straight / "model.safetensors")
    got = load_file(killed / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name  # bitwise on CPU (with LoRA: the merged model)
    if lora:
        adapters = load_file(straight / "adapter" / "adapter_model.safetensors")
        resumed_adapters = load_file(killed / "adapter" / "adapter_model.safetensors")
        assert adapters.keys() == resumed_adapters.keys() and adapters
        assert all(torch.equal(resumed_adapters[name], tensor) for name, tensor in adapters.items())


def test_explicit_resume_from_a_checkpoint_elsewhere_is_allowed_in_a_non_empty_folder(tmp_path):
    from retina_vqa.training.checkpoints import detect_last_checkpoint

    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("results of another run")
    elsewhere = str(fake_checkpoint(tmp_path / "old", 4))
    with pytest.raises(ValueError, match="--resume_from_checkpoint"):
        detect_last_checkpoint(str(output_dir), True, False, None)
    assert detect_last_checkpoint(str(output_dir), True, False, elsewhere) is None
    mine = fake_checkpoint(output_dir, 6)
    assert detect_last_checkpoint(str(output_dir), True, False, None) == str(mine)
    assert detect_last_checkpoint(str(output_dir), True, True, None) is None  # --overwrite_output_dir
