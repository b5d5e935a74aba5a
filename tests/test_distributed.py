"""Two processes equal one: the same global batch gives the same training curve under DDP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import ROOT, accelerate_launch, common_args, losses

pytestmark = pytest.mark.e2e  # real processes / servers: left out of `make test-fast`


@pytest.mark.parametrize("objective", [[], ["--image_loss_weight", "1.0"]], ids=["answers", "with_image_objective"])
def test_two_processes_follow_the_single_process_loss_curve(objective, tiny_dataset_dir, tmp_path):
    """Also with the image-level objective, whose classifier is used outside the model's forward: its gradient is
    averaged over the processes and its loss scaled like the answer loss, or the curves would part."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    steps = ["--do_train", "--max_steps", "6", "--save_strategy", "no", "--learning_rate", "5e-4", *objective]
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, str(ROOT / "run_vqa.py"), *common_args(tiny_dataset_dir, single), *steps],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    ddp = tmp_path / "ddp"
    command = accelerate_launch(
        "cpu_ddp.yaml", 29533, *common_args(tiny_dataset_dir, ddp), *steps, "--per_device_train_batch_size", "4"
    )  # 2 processes x 4 = the single process's 8
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = losses(single), losses(ddp)
    assert len(one) == len(two) == 6
    # Same samples per step and a loss normalised by the answer tokens of both processes: equal up to float
    # summation order.
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-3 * a, (one, two)
    assert two[-1] < two[0]
