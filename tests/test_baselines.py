"""Tests for the question-prior baseline."""

from __future__ import annotations

import json

import datasets
import pytest

from retina_vqa import baselines
from retina_vqa.baselines import QuestionPriorBaseline, evaluate_prior
from retina_vqa.synthetic import QUESTION_TYPES, generate_dataset, save_dataset


def _ds(rows: list[tuple[str, str, str]], with_types: bool = True) -> datasets.Dataset:
    data = {"question": [r[0] for r in rows], "answer": [r[1] for r in rows]}
    if with_types:
        data["question_type"] = [r[2] for r in rows]
    return datasets.Dataset.from_dict(data)


TRAIN = [
    ("is there any abnormality?", "yes", "abnormality"),
    ("does this retina look abnormal?", "yes", "abnormality"),
    ("is there any abnormality?", "no", "abnormality"),
    ("what is the diagnosis?", "mild dr", "diagnosis"),
    ("what is the diagnosis?", "Severe DR ", "diagnosis"),
    ("what is the diagnosis?", "severe dr", "diagnosis"),
    ("which eye is this?", "left eye", "laterality"),
]


def test_majority_answer_per_type():
    model = QuestionPriorBaseline.from_dataset(_ds(TRAIN))
    assert model.answers == {"abnormality": "yes", "diagnosis": "severe dr", "laterality": "left eye"}
    assert model.default_answer == "yes"  # 2x yes vs 2x severe dr: the first seen wins the tie
    preds = model.predict(["anything", "x", "y"], ["diagnosis", "laterality", "unseen_type"])
    assert preds == ["severe dr", "left eye", "yes"]


def test_falls_back_to_question_string():
    model = QuestionPriorBaseline.from_dataset(_ds(TRAIN, with_types=False))
    assert model.keyed_by == "question"
    assert model.predict(["  Is there any ABNORMALITY? ", "does this retina look abnormal?", "new?"]) == [
        "yes",
        "yes",
        "yes",
    ]
    assert model.answers["what is the diagnosis?"] == "severe dr"


def test_evaluate_prior_scores():
    test = [
        ("is there any abnormality?", "YES", "abnormality"),  # hit after lowercasing
        ("is there any abnormality?", "no", "abnormality"),  # miss
        ("what is the diagnosis?", " severe dr", "diagnosis"),  # hit after stripping
        ("which eye is this?", "right eye", "laterality"),  # miss
    ]
    scores = evaluate_prior(_ds(TRAIN), _ds(test))
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["num_examples"] == 4
    per = scores["per_question_type"]
    assert per["abnormality"] == {"exact_match": 0.5, "num_examples": 2}
    assert per["diagnosis"]["exact_match"] == 1.0
    assert per["laterality"]["exact_match"] == 0.0


def test_empty_or_malformed_training_split():
    with pytest.raises(ValueError, match="empty"):
        QuestionPriorBaseline().fit([], [])
    with pytest.raises(ValueError, match="answer"):
        QuestionPriorBaseline.from_dataset(datasets.Dataset.from_dict({"question": ["q"]}))


def test_cli_on_generated_dataset(tmp_path, capsys):
    dd = generate_dataset(10, 0, 5, image_size=64, seed=0, num_workers=1)
    save_dataset(dd, tmp_path / "ds")
    out_json = tmp_path / "scores.json"
    baselines.main(["--dataset_dir", str(tmp_path / "ds"), "--split", "test", "--output_json", str(out_json)])
    printed = capsys.readouterr().out
    assert "overall" in printed and "diagnosis" in printed
    scores = json.loads(out_json.read_text())
    assert set(scores["per_question_type"]) == set(QUESTION_TYPES)
    assert scores["per_question_type"]["modality"]["exact_match"] == 1.0
    assert 0.0 < scores["exact_match"] < 1.0


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        baselines.main(["--dataset_dir", str(tmp_path / "missing")])
    assert "--dataset_dir" in capsys.readouterr().err
    dd = generate_dataset(2, 0, 0, image_size=64, num_workers=1)
    save_dataset(dd, tmp_path / "ds")
    with pytest.raises(SystemExit):
        baselines.main(["--dataset_dir", str(tmp_path / "ds"), "--split", "dev"])
    assert "--split" in capsys.readouterr().err
