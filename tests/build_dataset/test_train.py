"""End to end: a dataset built from each source's label file trains, evaluates and predicts through run_vqa.py."""

from __future__ import annotations

import json
import math

import pytest

from retina_vqa.build_dataset import build_dataset
from retina_vqa.data.loading import load_dataset_dir

from ..helpers import common_args
from ..test_run_vqa import run_vqa
from .helpers import CSV_COLUMNS, MAKERS

# The question types each source's labels answer beyond the grade's (laterality: named by the file or a column;
# macular oedema: graded by the source).
EXTRA_TYPES = {
    "aptos": (),
    "eyepacs": ("laterality",),
    "idrid": ("macular_oedema",),
    "messidor2": ("macular_oedema",),
    "ddr": (),
    "csv": ("laterality",),
}


@pytest.mark.parametrize("source", list(MAKERS))
def test_built_dataset_trains_through_run_vqa(source, tmp_path):
    fixture = MAKERS[source](tmp_path / "in")
    data_dir = tmp_path / f"{source}-vqa"
    overrides = {"validation_fraction": 0.25, **(CSV_COLUMNS if source == "csv" else {})}
    build_dataset(fixture.options(source, data_dir, **overrides))
    built = load_dataset_dir(str(data_dir))
    output_dir = tmp_path / "run"
    args = common_args(data_dir, output_dir) + ["--do_train", "--do_eval", "--do_predict", "--max_steps", "2"]
    run_vqa.main(args + ["--plot", "false", "--save_strategy", "no"])
    results = json.loads((output_dir / "all_results.json").read_text())
    assert math.isfinite(results["train_loss"])
    assert results["eval_samples"] == built["validation"].num_rows
    assert results["predict_samples"] == built["test"].num_rows
    # Scored per question type, the new ones included, next to the question prior.
    for question_type in ("diagnosis", "referable_dr", *EXTRA_TYPES[source]):
        key = f"exact_match/{question_type}"
        assert 0.0 <= results[f"predict_{key}"] <= 1.0, key
        assert f"predict_prior_{key}" in results
    assert "predict_diagnosis_non_grade_answers" in results  # the grading metrics ran on the diagnosis rows


def test_an_eyepacs_build_is_scored_per_patient_and_at_operating_points(tmp_path):
    """Both eyes of each EyePACS patient (10_left, 10_right): the test split's referable / any-DR numbers per
    patient, worse eye, and at the operating points chosen on validation."""
    fixture = MAKERS["eyepacs"](tmp_path / "in", patients=24)
    data_dir = tmp_path / "eyepacs-vqa"
    build_dataset(fixture.options("eyepacs", data_dir, validation_fraction=0.3))
    test = load_dataset_dir(str(data_dir))["test"]
    diagnosis_patients = {p for p, t in zip(test["patient_id"], test["question_type"], strict=True) if t == "diagnosis"}
    output_dir = tmp_path / "run"
    args = common_args(data_dir, output_dir) + ["--do_train", "--do_eval", "--do_predict", "--max_steps", "2"]
    args += ["--answer_mode", "auto", "--operating_points", "sensitivity=0.8", "--plot", "false"]
    results = run_vqa.main(args + ["--save_strategy", "no"])
    assert results["predict_diagnosis_patients"] == len(diagnosis_patients) > 1
    for level in ("referable", "any_dr"):
        for measure in ("sensitivity", "specificity"):
            key = f"predict_diagnosis_patient_{level}_{measure}"
            if key in results:
                assert results[f"{key}_ci_low"] <= results[key] <= results[f"{key}_ci_high"]
    assert any(k.startswith("predict_diagnosis_patient_referable_") for k in results)
    assert (output_dir / "operating_points.json").exists()
    card = (output_dir / "README.md").read_text()
    shown = [m for m in ("sensitivity", "specificity") if f"predict_diagnosis_patient_referable_{m}" in results]
    assert shown  # the test split has referable or non-referable patients
    for measure in shown:
        value = results[f"predict_diagnosis_patient_referable_{measure}"]
        assert f"| referable DR {measure} per patient (worse eye) | {value:.3f} (" in card
    assert "predict_operating_point_high_sensitivity_threshold" in results
