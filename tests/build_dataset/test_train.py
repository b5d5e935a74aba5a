"""End to end: a dataset built from a source's label file trains, evaluates and predicts through run_vqa.py."""

from __future__ import annotations

import json
import math

import datasets

from retina_vqa.build_dataset import build_dataset

from ..test_run_vqa import common_args, run_vqa
from .conftest import make_idrid


def test_built_dataset_trains_through_run_vqa(tmp_path):
    fixture = make_idrid(tmp_path / "in", n_train=12, n_test=4)
    data_dir = tmp_path / "idrid-vqa"
    build_dataset(fixture.options("idrid", data_dir, validation_fraction=0.25))
    built = datasets.load_from_disk(str(data_dir))
    output_dir = tmp_path / "run"
    args = common_args(data_dir, output_dir) + ["--do_train", "--do_eval", "--do_predict", "--max_steps", "2"]
    run_vqa.main(args + ["--plot", "false", "--save_strategy", "no"])
    results = json.loads((output_dir / "all_results.json").read_text())
    assert math.isfinite(results["train_loss"])
    assert results["eval_samples"] == built["validation"].num_rows
    assert results["predict_samples"] == built["test"].num_rows
    # Scored per question type, the new ones included, next to the question prior.
    for key in ("exact_match/diagnosis", "exact_match/referable_dr", "exact_match/macular_oedema"):
        assert 0.0 <= results[f"predict_{key}"] <= 1.0, key
        assert f"predict_prior_{key}" in results
