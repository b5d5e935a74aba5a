"""Calibration of ranked answers: ROC AUC against scikit-learn, ECE by hand, temperature scaling on data with a
known over-confidence, the Trainer's metrics wrapper, and the reliability plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from retina_vqa.metrics.calibration import (
    RankedAnswerMetrics,
    ScoredAnswer,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    probabilities,
    referable_probability,
    reliability_bins,
    roc_auc,
)
from retina_vqa.questions import DIAGNOSIS_ANSWERS


def test_roc_auc_equals_scikit_learn_with_ties():
    generator = np.random.default_rng(0)
    for trial in range(20):
        labels = generator.integers(0, 2, 50).astype(bool)
        # Rounded scores: many ties, between and within the classes.
        scores = np.round(generator.random(50) + 0.3 * labels, 1 if trial % 2 else 3)
        assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc([0.1, 0.9], [False, True]) == 1.0
    assert roc_auc([0.5, 0.5, 0.5], [False, True, True]) == 0.5
    assert math.isnan(roc_auc([0.2, 0.3], [True, True]))  # one class only


def test_expected_calibration_error_by_hand():
    # Bin (0.7, 0.8]: confidences 0.75, 0.75 with one right -> |0.5 - 0.75| = 0.25, weight 2/4.
    # Bin (0.9, 1.0]: 0.95, 1.0 both right -> |1 - 0.975| = 0.025, weight 2/4.
    confidences, correct = [0.75, 0.75, 0.95, 1.0], [True, False, True, True]
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.5 * 0.25 + 0.5 * 0.025)
    bins = reliability_bins(confidences, correct)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 0, 0, 2, 0, 2]
    assert bins[7]["accuracy"] == 0.5 and bins[9]["confidence"] == pytest.approx(0.975)
    # Edges: 0.1 belongs to the first bin, (0.1, 0.2] to the second, 0 to the first.
    assert [b["count"] for b in reliability_bins([0.0, 0.1, 0.1000001], [1, 1, 1])][:2] == [2, 1]
    assert expected_calibration_error([1.0] * 5, [True] * 5) == 0.0
    assert math.isnan(expected_calibration_error([], []))


def test_probabilities_with_temperature_and_unscored_candidates():
    probs = probabilities([0.0, math.log(3.0), float("-inf")])
    assert probs.tolist() == pytest.approx([0.25, 0.75, 0.0])
    hot = probabilities([0.0, math.log(3.0)], temperature=2.0)
    assert hot.sum() == pytest.approx(1.0) and hot[1] == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)))
    assert probabilities([-1000.0, -1001.0]).sum() == pytest.approx(1.0)  # no underflow
    with pytest.raises(ValueError, match="positive"):
        probabilities([0.0], temperature=0.0)
    answers = list(DIAGNOSIS_ANSWERS)
    assert referable_probability(answers, [0.1, 0.2, 0.3, 0.25, 0.15]) == pytest.approx(0.7)


def overconfident(rows: int, candidates: int, sharpen: float, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Scores whose softmax is the true answer distribution, multiplied by `sharpen`: the answers are drawn from
    softmax(logits), the scores are sharpen * logits. Temperature `sharpen` restores calibration."""
    generator = np.random.default_rng(seed)
    scores, targets = [], []
    for _ in range(rows):
        logits = generator.normal(0.0, 1.5, candidates)
        true = np.exp(logits) / np.exp(logits).sum()
        targets.append(int(generator.choice(candidates, p=true)))
        scores.append(sharpen * logits)
    return scores, targets


def test_temperature_scaling_undoes_a_known_overconfidence():
    scores, targets = overconfident(4000, 5, sharpen=3.0, seed=0)
    temperature = fit_temperature(scores, targets)
    assert temperature == pytest.approx(3.0, rel=0.1)

    def ece(t: float) -> float:
        probs = [probabilities(s, t) for s in scores]
        return expected_calibration_error(
            [p.max() for p in probs], [p.argmax() == y for p, y in zip(probs, targets, strict=True)]
        )

    before, after = ece(1.0), ece(temperature)
    assert before > 0.1 and after < 0.03 and after < before / 4
    # Under-confident scores get a temperature below 1; no usable rows: 1.
    assert fit_temperature(*overconfident(2000, 3, sharpen=0.5, seed=1)) == pytest.approx(0.5, rel=0.15)
    assert fit_temperature([np.array([0.0, 1.0])], [-1]) == 1.0
    assert fit_temperature([np.array([0.0, float("-inf")])], [1]) == 1.0  # the reference was never scored


def scored_rows() -> list[ScoredAnswer]:
    """Diagnosis and eye questions, over-confident, with references; one reference not among the candidates."""
    generator = np.random.default_rng(3)
    rows = []
    diagnosis_scores, diagnosis_targets = overconfident(300, 5, sharpen=3.0, seed=4)
    for scores, target in zip(diagnosis_scores, diagnosis_targets, strict=True):
        rows.append(ScoredAnswer("diagnosis", DIAGNOSIS_ANSWERS, scores, DIAGNOSIS_ANSWERS[target], "diagnosis"))
    eye_scores, eye_targets = overconfident(10, 2, sharpen=3.0, seed=5)
    for scores, target in zip(eye_scores, eye_targets, strict=True):
        rows.append(ScoredAnswer("eye", ("left eye", "right eye"), scores, ["left eye", "right eye"][target]))
    rows.append(ScoredAnswer("eye", ("left eye", "right eye"), generator.normal(size=2), "both eyes"))
    return rows


def test_calibration_metrics_before_and_after_scaling():
    rows = scored_rows()
    temperatures = fit_temperatures(rows)
    # "eye" has too few rows of its own: it gets the temperature fitted on all rows.
    assert temperatures["eye"] == pytest.approx(fit_temperature([r.scores for r in rows], [r.target() for r in rows]))
    assert temperatures["diagnosis"] == pytest.approx(3.0, rel=0.25)
    metrics = calibration_metrics(rows, temperatures)
    assert metrics["ranked_questions"] == 311 and metrics["ranked_reference_not_in_list"] == 1
    assert metrics["ece_calibrated"] < metrics["ece"] and metrics["ece_calibrated/diagnosis"] < metrics["ece/diagnosis"]
    assert {"ece/eye", "ece_calibrated/eye", "temperature/diagnosis", "temperature/eye"} <= set(metrics)
    # P(referable) ranks referable references above the others: the AUC is the rank AUC of those probabilities.
    diagnosis = [r for r in rows if r.question_type == "diagnosis"]
    referable = [referable_probability(r.answers, probabilities(r.scores)) for r in diagnosis]
    labels = [r.reference in DIAGNOSIS_ANSWERS[2:] for r in diagnosis]
    assert metrics["diagnosis_referable_auc"] == pytest.approx(roc_auc_score(labels, referable))
    assert metrics["diagnosis_referable_auc"] > 0.7 and "diagnosis_referable_auc_calibrated" in metrics
    # The reference that is no candidate counts as wrong, and nothing fails on it.
    assert metrics["ranked_accuracy"] == pytest.approx(
        np.mean([r.target() == int(np.argmax(r.scores)) and r.target() >= 0 for r in rows])
    )
    assert calibration_metrics([ScoredAnswer("eye", ("left eye",), np.array([0.0]))]) == {"ranked_questions": 1}


def test_trainer_metrics_wrapper_reads_the_score_matrix():
    class Prediction:  # the Trainer's EvalPrediction: (token ids, candidate scores)
        def __init__(self, predictions):
            self.predictions = predictions

    scores = np.full((3, 5), np.nan)
    scores[0, :5] = [0.0, 3.0, 0.0, 0.0, 0.0]  # diagnosis, "mild dr" most likely
    scores[2, :2] = [-1.0, 1.0]
    wrapped = RankedAnswerMetrics(
        lambda prediction: {"exact_match": 0.5},
        ["diagnosis", "eye"],
        [DIAGNOSIS_ANSWERS, ("left eye", "right eye")],
        row_sets=[0, -1, 1],
        references=["mild dr", "a generated answer", "left eye"],
        question_types=["diagnosis", "cause", "laterality"],
    )
    metrics = wrapped(Prediction((np.zeros((3, 4)), scores)))
    assert metrics["exact_match"] == 0.5 and metrics["ranked_questions"] == 2 and metrics["ranked_accuracy"] == 0.5
    assert [r.question_type for r in wrapped.last_rows] == ["diagnosis", "laterality"]
    assert wrapped.last_rows[1].scores.tolist() == [-1.0, 1.0]  # the NaN padding cut off
    with pytest.raises(ValueError, match="candidate scores for 2 of 3 rows"):
        wrapped(Prediction((np.zeros((2, 4)), scores[:2])))


def test_reliability_plot(tmp_path):
    from PIL import Image

    from retina_vqa.plots import CALIBRATION_INCHES, DPI, plot_calibration

    rows = scored_rows()
    records = []
    for row in rows:
        probs = probabilities(row.scores)
        top = int(np.argmax(probs))
        records.append(
            {
                "question_type": row.question_type,
                "correct": row.answers[top] == row.reference,
                "answer_scores": dict(zip(row.answers, probs.tolist(), strict=True)),
            }
        )
    records.append({"question_type": "cause", "correct": False})  # generated: left out
    size = plot_calibration(records, tmp_path / "calibration.png")
    assert size == (round(CALIBRATION_INCHES[0] * DPI), round(CALIBRATION_INCHES[1] * DPI))
    assert Image.open(tmp_path / "calibration.png").size == size
    # With the same rows at temperature 1 next to them (bench/answer_ranking.py --figure): another curve.
    plot_calibration(records, tmp_path / "before_after.png", uncalibrated=records)
    plain = np.asarray(Image.open(tmp_path / "calibration.png").convert("RGB"))
    both = np.asarray(Image.open(tmp_path / "before_after.png").convert("RGB"))
    assert both.shape == plain.shape and (both != plain).any()
    with pytest.raises(ValueError, match="answer_mode"):
        plot_calibration(records[-1:], tmp_path / "none.png")
