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


def test_prior_grading_metrics_are_the_floor_of_one_constant_grade():
    # The prior answers every diagnosis question with the training majority grade ("severe dr", referable): it
    # never disagrees more than chance (kappa 0) and flags every eye (sensitivity 1, specificity 0).
    grades = ["healthy retina", "mild dr", "moderate dr", "severe dr", "proliferative dr", "healthy retina"]
    test = [("what is the diagnosis?", grade, "diagnosis") for grade in grades]
    scores = score_prior(_ds(TRAIN), _ds(test))
    assert scores["diagnosis_qwk"] == 0.0
    for task in ("referable", "any_dr"):
        assert scores[f"diagnosis_{task}_sensitivity"] == 1.0
        assert scores[f"diagnosis_{task}_specificity"] == 0.0
        assert scores[f"diagnosis_{task}_specificity_ci_low"] == 0.0 < scores[f"diagnosis_{task}_specificity_ci_high"]
    assert scores["diagnosis_non_grade_answers"] == 0
    # A healthy majority is the other end: nothing flagged.
    healthy_train = [("what is the diagnosis?", "healthy retina", "diagnosis")] * 2 + TRAIN
    healthy = score_prior(_ds(healthy_train), _ds(test))
    assert healthy["diagnosis_qwk"] == 0.0
    assert healthy["diagnosis_referable_sensitivity"] == healthy["diagnosis_any_dr_sensitivity"] == 0.0
    assert healthy["diagnosis_referable_specificity"] == healthy["diagnosis_any_dr_specificity"] == 1.0


def test_prior_metrics_of_a_run_carry_the_grading_metrics():
    from retina_vqa.metrics import GRADING_KEYS
    from retina_vqa.training.outputs import prior_metrics

    test = [("what is the diagnosis?", grade, "diagnosis") for grade in ("mild dr", "severe dr", "healthy retina")]
    reported = prior_metrics(_ds(TRAIN), _ds(test), "eval")
    scores = score_prior(_ds(TRAIN), _ds(test))
    for key in GRADING_KEYS:
        assert reported[f"eval_prior_diagnosis_{key}"] == scores[f"diagnosis_{key}"], key
    assert not any("confusion" in key for key in reported)


def test_score_prior_leaves_the_grading_rows_of_ungradable_images_out_as_for_the_model():
    train = datasets.Dataset.from_dict(
        {
            "question": ["what is the diagnosis?", "is the image quality adequate for grading?"] * 2,
            "answer": ["mild dr", "yes", "mild dr", "yes"],
            "question_type": ["diagnosis", "quality"] * 2,
        }
    )
    evaluated = datasets.Dataset.from_dict(
        {
            "question": ["what is the diagnosis?", "is the image quality adequate for grading?"] * 2,
            "answer": ["mild dr", "yes", "severe dr", "no"],
            "question_type": ["diagnosis", "quality"] * 2,
            "image_id": ["a", "a", "b", "b"],
        }
    )
    scores = score_prior(train, evaluated)
    # Image b is ungradable: its wrong "mild dr" is not graded; the prior's quality "yes" is still wrong for it.
    assert scores["diagnosis_accuracy"] == 1.0 and scores["ungradable_rows"] == 1
    assert scores["exact_match/quality"] == 0.5
    assert score_prior(train, evaluated.remove_columns("image_id"))["diagnosis_accuracy"] == 0.5
