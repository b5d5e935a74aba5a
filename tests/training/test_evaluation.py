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
