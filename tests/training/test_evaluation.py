"""A run's screening numbers (training/evaluation.py): macro AUROC over the grades, operating points chosen on the
validation split, saved with the model and applied to the test split."""

from __future__ import annotations

import json
import sys

import pytest

from ..helpers import ROOT, common_args

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402


@pytest.fixture(scope="module")
def diagnosis_dir(tmp_path_factory):
    """Diagnosis and abnormality questions only: 8 training, 24 validation, 12 test images at 64 px."""
    from retina_vqa.synthetic import generate_dataset

    path = tmp_path_factory.mktemp("data") / "diagnosis"
    dataset = generate_dataset(
        8, 24, 12, image_size=64, seed=3, num_workers=1, question_types=["diagnosis", "abnormality"]
    )
    dataset.save_to_disk(str(path))
    return path


def _run(data_dir, output_dir, *extra: str) -> dict:
    args = common_args(data_dir, output_dir) + ["--do_train", "--do_eval", "--do_predict", "--max_steps", "3"]
    args += ["--answer_mode", "auto", "--plot", "false", "--save_strategy", "no", *extra]
    return run_vqa.main(args)


def test_operating_points_come_from_validation_and_are_applied_to_the_test_split(diagnosis_dir, tmp_path):
    targets = ["--operating_points", "sensitivity=0.9,specificity=0.8"]
    results = _run(diagnosis_dir, tmp_path / "a", *targets)
    saved = json.loads((tmp_path / "a" / "operating_points.json").read_text())
    names = {point["name"] for point in saved["operating_points"]}
    assert names == {"high_sensitivity", "high_specificity"}
    for point in saved["operating_points"]:  # met on the validation rows it was fitted on
        assert point[point["name"].removeprefix("high_")] >= point["target"]
        threshold = results[f"predict_operating_point_{point['name']}_threshold"]
        assert threshold == pytest.approx(point["threshold"])
        for measure in ("sensitivity", "specificity"):
            key = f"predict_operating_point_{point['name']}_{measure}"
            if key in results:
                assert results[f"{key}_ci_low"] <= results[key] <= results[f"{key}_ci_high"]
    assert 0 <= results["eval_diagnosis_macro_auroc"] <= 1 and 0 <= results["predict_diagnosis_macro_auroc"] <= 1
    # The cross-dataset table's row of the test split: the run's own numbers, the saved points included.
    table = json.loads((tmp_path / "a" / "cross_dataset-test.json").read_text())
    assert len(table) == 1 and table[0]["questions"] == results["predict_samples"]
    assert table[0]["diagnosis_macro_auroc"] == pytest.approx(results["predict_diagnosis_macro_auroc"])
    assert table[0]["diagnosis_qwk"] == pytest.approx(results["predict_diagnosis_qwk"])
    for point in saved["operating_points"]:
        key = f"operating_point_{point['name']}_specificity"
        assert table[0].get(key) == pytest.approx(results.get(f"predict_{key}"))
    assert "| QWK | macro AUROC |" in (tmp_path / "a" / "cross_dataset-test.md").read_text()
    card = (tmp_path / "a" / "README.md").read_text()
    threshold = results["predict_operating_point_high_sensitivity_threshold"]
    assert f"| high sensitivity | {threshold:.4f} |" in card and "macro one-vs-rest AUROC" in card
    # Other test rows: other test numbers, the same thresholds (chosen on validation only).
    _run(diagnosis_dir, tmp_path / "b", *targets, "--max_predict_samples", "6")
    assert json.loads((tmp_path / "b" / "operating_points.json").read_text()) == saved


def test_operating_points_need_ranked_answers_on_a_validation_split(diagnosis_dir, tmp_path):
    with pytest.raises(ValueError, match="--operating_points .* --answer_mode auto"):
        run_vqa.main(common_args(diagnosis_dir, tmp_path) + ["--do_predict", "--operating_points", "sensitivity=0.9"])
    with pytest.raises(ValueError, match="--operating_points"):
        _run(diagnosis_dir, tmp_path / "x", "--operating_points", "sensitivity=97.5")


def test_predict_and_the_python_api_refer_at_the_saved_points(diagnosis_dir, tmp_path, capsys):
    from retina_vqa import predict
    from retina_vqa.inference import answer_questions, load_for_inference
    from retina_vqa.metrics.screening import find_operating_points

    output_dir = tmp_path / "model"
    _run(diagnosis_dir, output_dir, "--operating_points", "sensitivity=0.9,specificity=0.8")
    points = {p.name: p.threshold for p in find_operating_points(output_dir)}
    model, processor = load_for_inference(output_dir, device="cpu")
    image = str(ROOT / "docs" / "app.png")  # any picture: the decision follows the probability, not the image
    (answer,) = answer_questions(
        model, processor, image, "what is the diagnosis?", answer_mode="auto", return_scores=True,
        operating_points=find_operating_points(output_dir),
    )  # fmt: skip
    decision = answer["referral"]
    for name, threshold in points.items():
        assert decision[name] == ("refer" if decision["p_referable"] >= threshold else "do not refer")
    predict.main(["--model_name_or_path", str(output_dir), "--image", image, "--question", "what is the diagnosis?",
                  "--answer_mode", "auto", "--device", "cpu"])  # fmt: skip
    assert (
        f"Referral: P(referable) {decision['p_referable']:.3f}; high sensitivity: {decision['high_sensitivity']}"
        in (capsys.readouterr().out)
    )
    answered = tmp_path / "answered.jsonl"
    predict.main(["--model_name_or_path", str(output_dir), "--dataset_dir", str(diagnosis_dir), "--split", "test",
                  "--output_file", str(answered), "--device", "cpu", "--answer_mode", "auto"])  # fmt: skip
    rows = [json.loads(line) for line in answered.read_text().splitlines()]
    diagnosis = [r for r in rows if r["question_type"] == "diagnosis"]
    assert diagnosis and all(set(r["referral"]) == {"p_referable", *points} for r in diagnosis)
    assert not any("referral" in r for r in rows if r["question_type"] != "diagnosis")


def test_predict_compares_several_datasets_in_one_table(diagnosis_dir, tmp_path):
    """python -m retina_vqa.predict --dataset_dir A B: each answered and scored, one table."""
    import shutil

    from retina_vqa import predict

    output_dir = tmp_path / "model"
    _run(diagnosis_dir, output_dir, "--operating_points", "sensitivity=0.9")
    other = tmp_path / "second-site"
    shutil.copytree(diagnosis_dir, other)
    predict.main(["--model_name_or_path", str(output_dir), "--dataset_dir", str(diagnosis_dir), str(other),
                  "--device", "cpu", "--answer_mode", "auto", "--max_samples", "12"])  # fmt: skip
    summaries = json.loads((output_dir / "cross_dataset-test.json").read_text())
    assert [s["dataset"] for s in summaries] == ["diagnosis-test", "second-site-test"]
    assert summaries[0] == {**summaries[1], "dataset": "diagnosis-test"}  # the same rows, the same numbers
    assert 0 <= summaries[0]["exact_match"] <= 1 and "diagnosis_qwk" in summaries[0]
    assert summaries[0]["questions"] == 12 and "operating_point_high_sensitivity_threshold" in summaries[0]
    table = (output_dir / "cross_dataset-test.md").read_text()
    assert "| dataset | questions | exact match | QWK | macro AUROC |" in table and "| second-site-test |" in table
    assert (output_dir / "predictions-second-site-test.jsonl").exists()
    with pytest.raises(SystemExit):
        predict.main(["--model_name_or_path", str(output_dir), "--dataset_dir", str(diagnosis_dir), str(other),
                      "--output_file", str(tmp_path / "x.jsonl")])  # fmt: skip


def test_a_run_fits_the_out_of_distribution_guard_and_saves_it_with_the_model(diagnosis_dir, tmp_path):
    from PIL import Image

    from retina_vqa.inference import answer_questions, load_for_inference

    output_dir = tmp_path / "model"
    results = _run(diagnosis_dir, output_dir, "--fit_ood_guard", "--ood_guard_max_images", "30")
    config = json.loads((output_dir / "ood_guard.json").read_text())
    assert config["num_train"] == results["ood_guard_train_images"] == 8  # the 8 distinct training images
    assert config["threshold"] == pytest.approx(results["ood_guard_threshold"])
    model, processor = load_for_inference(output_dir, device="cpu")
    blank = Image.new("RGB", (64, 64), "white")
    (answer,) = answer_questions(model, processor, blank, "what is the diagnosis?", return_scores=True)
    assert answer["out_of_distribution"]["flagged"] and answer["out_of_distribution"]["score"] > config["threshold"]


# ---------------------------------------------------------------------------------------------------------
# Ungradable images: the grade-based screening numbers leave them out
# ---------------------------------------------------------------------------------------------------------


def test_screening_rows_of_ungradable_images_are_left_out():
    from types import SimpleNamespace

    import datasets
    import numpy as np

    from retina_vqa.metrics.calibration import ScoredAnswer
    from retina_vqa.questions import DIAGNOSIS_ANSWERS
    from retina_vqa.training.evaluation import diagnosis_scores, patient_metrics, screening_metrics

    grades = tuple(DIAGNOSIS_ANSWERS)
    scores = np.array([0.0, 0.0, 3.0, 0.0, 0.0])
    rows = [
        ScoredAnswer("diagnosis", grades, scores, "moderate dr", "diagnosis"),
        ScoredAnswer("diagnosis", grades, scores, "healthy retina", "diagnosis", gradable=False),
        ScoredAnswer("diagnosis", grades, np.array([3.0, 0.0, 0.0, 0.0, 0.0]), "healthy retina", "diagnosis"),
    ]
    p, referable, _, reference_grades = diagnosis_scores(SimpleNamespace(last_rows=rows), None)
    assert list(reference_grades) == [2, 0] and list(referable) == [True, False]
    # Gradable eyes only: the moderate eye scored above the healthy one, so every grade's AUROC is perfect.
    metrics, _ = screening_metrics(SimpleNamespace(last_rows=rows), None, "eval")
    assert metrics["eval_diagnosis_macro_auroc"] == 1.0

    # Patient level, worse eye: patient 1's ungradable eye (reference proliferative, answered healthy) is left out.
    rows = [  # image, question type, reference, prediction
        ("a", "quality", "yes", "yes"),
        ("a", "diagnosis", "healthy retina", "healthy retina"),
        ("b", "quality", "no", "yes"),
        ("b", "diagnosis", "proliferative dr", "healthy retina"),
        ("c", "quality", "yes", "yes"),
        ("c", "diagnosis", "moderate dr", "moderate dr"),
    ]
    records = [
        {"image_id": i, "question_type": t, "reference": r, "prediction": p, "correct": r == p} for i, t, r, p in rows
    ]
    split = datasets.Dataset.from_dict({"patient_id": ["p1", "p1", "p1", "p1", "p2", "p2"]})
    args = SimpleNamespace(patient_column="patient_id")
    metrics = patient_metrics(records, split, args, "predict")
    assert metrics["predict_diagnosis_patient_referable_sensitivity"] == 1.0  # p2 referred; p1 not referable now
    assert metrics["predict_diagnosis_patient_referable_specificity"] == 1.0
    # Without the quality rows every eye counts: p1's missed proliferative eye makes sensitivity 1/2.
    graded_all = [r for r in records if r["question_type"] == "diagnosis"]
    everything = patient_metrics(graded_all, datasets.Dataset.from_dict({"patient_id": ["p1", "p1", "p2"]}), args, "p")
    assert everything["p_diagnosis_patient_referable_sensitivity"] == 0.5


def test_a_run_grades_gradable_images_only_and_reports_the_ungradable_rates(tmp_path):
    """End to end: opt-in defects drawn by the generator, a quality question, and a run whose diagnosis numbers count
    the gradable test images only, with the ungradable rates in all_results.json."""
    from retina_vqa.synthetic import generate_dataset

    dataset = generate_dataset(
        8, 10, 12, image_size=64, seed=5, num_workers=1, question_types=["diagnosis", "quality"],
        quality_defect_rate=0.4, quality_defects="small_pupil,eyelashes,blurred",
    )  # fmt: skip
    dataset.save_to_disk(str(tmp_path / "data"))
    results = _run(tmp_path / "data", tmp_path / "out")
    for split, prefix in (("validation", "eval"), ("test", "predict")):
        qualities = dict(zip(dataset[split]["image_id"], dataset[split]["quality"], strict=True))
        ungradable = sum(q != "good" for q in qualities.values())
        assert 0 < ungradable < len(qualities)
        assert results[f"{prefix}_ungradable_images"] == ungradable == results[f"{prefix}_ungradable_rows"]
        assert results[f"{prefix}_ungradable_rate"] == pytest.approx(ungradable / len(qualities))
        assert 0 <= results[f"{prefix}_predicted_ungradable_rate"] <= 1
        # The diagnosis confusion counts the gradable images' answers only.
        counted = sum(v for k, v in results.items() if k.startswith(f"{prefix}_diagnosis_confusion/"))
        assert counted == len(qualities) - ungradable
