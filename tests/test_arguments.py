"""VqaTrainingArguments defaults: DataLoader workers chosen for the machine."""

from __future__ import annotations

import pytest
import torch

from retina_vqa import arguments
from retina_vqa.arguments import MAX_AUTO_WORKERS, VqaTrainingArguments, auto_num_workers


def test_default_on_a_cpu_machine_loads_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = VqaTrainingArguments(output_dir=str(tmp_path))
    assert args.dataloader_num_workers == 0
    assert args.dataloader_persistent_workers is False  # torch refuses persistent workers without workers


def test_explicit_workers_persist_between_epochs(tmp_path):
    args = VqaTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2)
    assert args.dataloader_num_workers == 2 and args.dataloader_persistent_workers is True
    args = VqaTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2, dataloader_persistent_workers=False)
    assert args.dataloader_persistent_workers is False


@pytest.mark.parametrize(
    ("cores", "local_processes", "expected"),
    [(16, 1, MAX_AUTO_WORKERS), (16, 4, 3), (6, 1, 5), (2, 2, 0), (1, 1, 0)],
)
def test_automatic_workers_with_a_gpu_share_the_cores(monkeypatch, cores, local_processes, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(arguments.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    assert auto_num_workers() == expected


def test_negative_workers_other_than_auto_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dataloader_num_workers must be -1"):
        VqaTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=-2)


def test_cpu_runs_on_a_gpu_machine_get_no_workers_and_a_prefetch_factor_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(arguments.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert auto_num_workers(use_cpu=True) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = VqaTrainingArguments(output_dir=str(tmp_path), dataloader_prefetch_factor=4)
    assert args.dataloader_num_workers == 0 and args.dataloader_prefetch_factor is None


def test_the_trainers_label_smoothing_is_refused_with_the_recipes_flag(tmp_path):
    # The Trainer's smoothing reads outputs.logits, which the shared-image forward does not return: it would
    # crash at the first step (KeyError: 'logits') instead of here.
    with pytest.raises(ValueError, match=r"--label_smoothing_factor 0.1 .*pass --label_smoothing 0.1"):
        VqaTrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="--max_questions_per_image"):
        VqaTrainingArguments(output_dir=str(tmp_path), max_questions_per_image=-1)


def test_blip2_trains_in_bf16_on_a_gpu_by_default_and_warns_about_fp16(tmp_path, monkeypatch, caplog):
    from retina_vqa.arguments import choose_precision

    blip, blip2, kept, fp16 = (
        VqaTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=0, **extra)
        for extra in ({}, {}, {"auto_bf16": False}, {})
    )
    fp16.fp16 = True
    # As on a GPU with bf16 (the arguments above were made on this CPU machine).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    choose_precision(blip, "blip")
    assert not blip.bf16  # BLIP keeps the Trainer's default
    choose_precision(blip2, "blip-2")
    assert blip2.bf16 and blip2.mixed_precision == "bf16"
    choose_precision(kept, "blip-2")
    assert not kept.bf16
    choose_precision(fp16, "instructblip")
    assert "known to produce NaN" in caplog.text and not fp16.bf16


@pytest.mark.parametrize("name", ["demo", "demo-blip2", "demo-multidisease"])
def test_the_shipped_demo_configs_parse(name, tmp_path):
    """Every key of a demo config is a flag of run_vqa.py (a misspelt key fails here, not after a user's install)."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    config["output_dir"] = str(tmp_path / "out")
    copy = tmp_path / f"{name}.yaml"
    copy.write_text(yaml.safe_dump(config))
    model_args, data_args, training_args = arguments.parse_args([str(copy)])
    assert data_args.dataset_dir == config["dataset_dir"]
    assert training_args.num_train_epochs == config["num_train_epochs"]
    if name == "demo-blip2":
        assert model_args.vision_model_name_or_path == "outputs/demo" and model_args.freeze_vision_encoder


def test_calibration_without_generated_evaluation_is_refused_with_both_flags(tmp_path):
    # Without --predict_with_generate the evaluation computes no metrics: no candidate scores to fit temperatures on.
    with pytest.raises(ValueError, match=r"--calibrate .*--predict_with_generate") as error:
        VqaTrainingArguments(output_dir=str(tmp_path), answer_mode="auto", calibrate=True, predict_with_generate=False)
    assert "--predict_with_generate true" in str(error.value)
    args = VqaTrainingArguments(output_dir=str(tmp_path), answer_mode="auto", calibrate=True)
    assert args.calibrate and args.predict_with_generate


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="what a run prints on a machine without a GPU")
def test_a_cpu_run_prints_no_warning_about_the_missing_gpu(tiny_dataset_dir, tmp_path):
    """The first screen of a CPU run: no torch warning about pinned memory, no DeepSpeed notice that it fell back to
    the CPU (a fresh process, as a user starts it, so that DeepSpeed is imported by the run)."""
    import os
    import subprocess
    import sys

    from .helpers import ROOT, common_args

    args = common_args(tiny_dataset_dir, tmp_path / "out") + ["--do_train", "--do_eval", "--max_steps", "2"]
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"} | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "run_vqa.py"), *args, "--max_eval_samples", "13", "--plot", "false"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout + run.stderr
    assert "eval_exact_match" in printed  # the run got as far as the numbers
    assert "pin_memory" not in printed and "Setting accelerator to CPU" not in printed


def test_pinned_memory_is_off_without_an_accelerator(tmp_path, monkeypatch):
    monkeypatch.setattr(arguments, "_has_accelerator", lambda: False)
    assert VqaTrainingArguments(output_dir=str(tmp_path)).dataloader_pin_memory is False
    monkeypatch.setattr(arguments, "_has_accelerator", lambda: True)
    assert VqaTrainingArguments(output_dir=str(tmp_path)).dataloader_pin_memory is True
