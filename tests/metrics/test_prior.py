"""The question-prior baseline: fit, predict, and scored with the model's own metrics."""

from __future__ import annotations

import datasets
import pytest

from retina_vqa.metrics import QuestionPriorBaseline, compute_vqa_metrics, score_prior


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
    model = QuestionPriorBaseline().fit(*zip(*TRAIN, strict=True))
    # "Severe DR " and "severe dr" are one answer (normalize_answer), which makes it the majority.
    assert model.answers == {"abnormality": "yes", "diagnosis": "severe dr", "laterality": "left eye"}
    assert model.default_answer == "yes"  # 2x yes vs 2x severe dr: the first seen wins the tie
    preds = model.predict(["anything", "x", "y"], ["diagnosis", "laterality", "unseen_type"])
    assert preds == ["severe dr", "left eye", "yes"]


def test_falls_back_to_question_string():
    questions, answers, _ = zip(*TRAIN, strict=True)
    model = QuestionPriorBaseline().fit(questions, answers)
    assert model.keyed_by == "question"
    assert model.predict(["  Is there any ABNORMALITY? ", "does this retina look abnormal?", "new?"]) == [
        "yes",
        "yes",
        "yes",
    ]
    assert model.predict(["What is the diagnosis"]) == ["severe dr"]


def test_score_prior_uses_the_model_metrics():
    test = [
        ("is there any abnormality?", "YES", "abnormality"),  # hit after normalisation
        ("is there any abnormality?", "no", "abnormality"),  # miss
        ("what is the diagnosis?", " severe dr.", "diagnosis"),  # hit after normalisation
        ("which eye is this?", "right eye", "laterality"),  # miss
    ]
    scores = score_prior(_ds(TRAIN), _ds(test))
    assert scores == compute_vqa_metrics(
        ["yes", "yes", "severe dr", "left eye"],
        [t[1] for t in test],
        question_types=[t[2] for t in test],
    )
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["num_examples"] == 4
    assert scores["exact_match/abnormality"] == 0.5
    assert scores["exact_match/diagnosis"] == 1.0
    assert scores["exact_match/laterality"] == 0.0


def test_score_prior_without_types_keys_by_question():
    test = [("is there any abnormality?", "yes", ""), ("which eye is this?", "right eye", "")]
    scores = score_prior(_ds(TRAIN, with_types=False), _ds(test, with_types=False))
    assert scores["exact_match"] == 0.5
    assert not any(key.startswith("exact_match/") for key in scores)


def test_empty_or_malformed_training_split():
    with pytest.raises(ValueError, match="empty"):
        QuestionPriorBaseline().fit([], [])
    with pytest.raises(ValueError, match="answer"):
        score_prior(datasets.Dataset.from_dict({"question": ["q"]}), _ds(TRAIN))
