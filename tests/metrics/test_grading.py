"""retina_vqa.metrics.grading: quadratic weighted kappa and screening sensitivity / specificity with Wilson
intervals, against scikit-learn and hand-computed cases, with answers that are not a grade and undefined cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from retina_vqa.metrics import DEFAULT_DIAGNOSIS_LABELS, GRADING_KEYS, grading_metrics, wilson_interval
from retina_vqa.metrics.grading import format_grading, quadratic_weighted_kappa
from retina_vqa.questions import DIAGNOSIS_ANSWERS

GRADES = list(DIAGNOSIS_ANSWERS)  # ICDR 0..4
# Non-grade answers scored as the grade farthest from the reference (written out, not computed like the code).
FARTHEST = {0: 4, 1: 4, 2: 0, 3: 0, 4: 0}
NOT_GRADES = ["", "yes", "moderate npdr", "I am not sure"]


def answers(grades: list[int]) -> list[str]:
    return [GRADES[g] for g in grades]


def sklearn_qwk(reference, predicted) -> float:
    """scikit-learn's quadratic weighted kappa over the five grades; NaN where undefined (it warns there, in a way
    that depends on its version)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cohen_kappa_score(reference, predicted, weights="quadratic", labels=list(range(5)))


def sklearn_sensitivity_specificity(reference_positive, predicted_positive) -> tuple[float, float]:
    tn, fp, fn, tp = sklearn_confusion_matrix(reference_positive, predicted_positive, labels=[False, True]).ravel()
    return tp / (tp + fn), tn / (tn + fp)


# ---------------------------------------------------------------------------------------------------------
# Quadratic weighted kappa
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "predicted", "expected"),
    [
        ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 1.0),
        # O: (0,0) (0,1) (1,1) (1,1); marginals [2, 2] x [1, 3] / 4 -> E off-diagonal 1.5 + 0.5: 1 - 1/2.
        ([0, 0, 1, 1], [0, 1, 1, 1], 0.5),
        # Full reversal of the two ends: observed disagreement 2 x 16, expected 16 -> 1 - 2.
        ([0, 4], [4, 0], -1.0),
        # One answer for every eye: E = O (all in column 1), so sum wO = sum wE = 2 and kappa is 0.
        ([0, 1, 2], [1, 1, 1], 0.0),
    ],
)
def test_kappa_hand_computed(reference, predicted, expected):
    assert quadratic_weighted_kappa(reference, predicted, 5) == pytest.approx(expected)
    assert grading_metrics(answers(reference), answers(predicted))["diagnosis_qwk"] == pytest.approx(expected)


def test_kappa_matches_sklearn_on_random_cases():
    rng = np.random.default_rng(0)
    compared = 0
    for case in range(300):
        n = int(rng.integers(2, 60))
        # Skewed grade distributions too, as in real screening sets (most eyes healthy).
        weights = rng.dirichlet(np.full(5, 0.3 if case % 2 else 3.0))
        reference = rng.choice(5, size=n, p=weights)
        # Predictions: mostly near the reference, some anywhere.
        predicted = np.clip(reference + rng.integers(-1, 2, size=n), 0, 4)
        anywhere = rng.random(n) < 0.3
        predicted[anywhere] = rng.integers(0, 5, size=int(anywhere.sum()))
        expected = sklearn_qwk(reference, predicted)
        if math.isnan(expected):
            continue
        got = grading_metrics(answers(list(reference)), answers(list(predicted)))
        assert got["diagnosis_qwk"] == pytest.approx(expected, abs=1e-12), case
        compared += 1
    assert compared > 250


def test_non_grade_answers_are_the_farthest_grade_in_kappa_and_counted():
    rng = np.random.default_rng(1)
    for case in range(100):
        n = int(rng.integers(3, 40))
        reference = rng.integers(0, 5, size=n)
        predicted = rng.integers(0, 5, size=n)
        off_scale = rng.random(n) < 0.25
        prediction_text = [
            NOT_GRADES[i % len(NOT_GRADES)] if off else GRADES[p]
            for i, (p, off) in enumerate(zip(predicted, off_scale, strict=True))
        ]
        scored_as = [FARTHEST[r] if off else p for r, p, off in zip(reference, predicted, off_scale, strict=True)]
        expected = sklearn_qwk(reference, scored_as)
        got = grading_metrics(answers(list(reference)), prediction_text)
        assert got["diagnosis_non_grade_answers"] == int(off_scale.sum())
        if not math.isnan(expected):
            assert got["diagnosis_qwk"] == pytest.approx(expected, abs=1e-12), case


def test_kappa_with_one_reference_class():
    # All references on one grade: the observed table is the expected one, so kappa is 0 whatever is predicted.
    reference, predicted = [2] * 6, [0, 1, 2, 2, 3, 4]
    expected = sklearn_qwk(reference, predicted)
    assert expected == pytest.approx(0.0)
    assert grading_metrics(answers(reference), answers(predicted))["diagnosis_qwk"] == pytest.approx(expected)


def test_kappa_undefined_when_both_sides_sit_on_one_grade_is_left_out():
    assert math.isnan(sklearn_qwk([1, 1, 1], [1, 1, 1]))
    metrics = grading_metrics(answers([1, 1, 1]), answers([1, 1, 1]))
    assert "diagnosis_qwk" not in metrics
    assert metrics["diagnosis_any_dr_sensitivity"] == 1.0  # the rest is still reported
    assert metrics["diagnosis_non_grade_answers"] == 0


def test_kappa_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        quadratic_weighted_kappa([], [], 5)
    with pytest.raises(ValueError, match="outside"):
        quadratic_weighted_kappa([0, 1], [0, -1], 5)
    with pytest.raises(ValueError, match="grades"):
        quadratic_weighted_kappa([0, 1], [0], 5)


# ---------------------------------------------------------------------------------------------------------
# Wilson score interval
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "total", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # By hand: p = 0.8, n = 10, z = 1.96: (0.8 + 0.19208 -/+ 1.96 sqrt(0.016 + 0.0096040)) / 1.38416.
        (8, 10, 0.4902, 0.9433),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_hand_values(successes, total, low, high):
    got_low, got_high = wilson_interval(successes, total)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_is_symmetric_and_contains_the_estimate():
    for total in (1, 2, 7, 50, 1000):
        for successes in range(0, total + 1, max(1, total // 10)):
            low, high = wilson_interval(successes, total)
            assert 0.0 <= low <= successes / total <= high <= 1.0
            mirror_low, mirror_high = wilson_interval(total - successes, total)
            assert low == pytest.approx(1 - mirror_high) and high == pytest.approx(1 - mirror_low)
    # Wider with fewer trials at the same proportion.
    assert np.ptp(wilson_interval(5, 10)) > np.ptp(wilson_interval(50, 100))


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="within"):
        wilson_interval(4, 3)


# ---------------------------------------------------------------------------------------------------------
# Sensitivity / specificity
# ---------------------------------------------------------------------------------------------------------


def test_screening_metrics_hand_computed():
    # References 0 0 1 2 3 4 4, predictions 0 1 2 1 3 4 "yes".
    reference = answers([0, 0, 1, 2, 3, 4, 4])
    predicted = answers([0, 1, 2, 1, 3, 4]) + ["yes"]
    metrics = grading_metrics(reference, predicted)
    # Referable (>= 2): positives 2, 3, 4, 4 -> caught 3 and 4, missed 2 (said 1) and the non-grade 4: 2/4.
    # Negatives 0, 0, 1 -> 1 said 2 is a false alarm: 2/3.
    assert metrics["diagnosis_referable_sensitivity"] == pytest.approx(2 / 4)
    assert metrics["diagnosis_referable_specificity"] == pytest.approx(2 / 3)
    # Any DR (>= 1): positives 1, 2, 3, 4, 4 -> all but the non-grade answer: 4/5; negatives 0, 0 -> 1/2.
    assert metrics["diagnosis_any_dr_sensitivity"] == pytest.approx(4 / 5)
    assert metrics["diagnosis_any_dr_specificity"] == pytest.approx(1 / 2)
    assert (metrics["diagnosis_referable_sensitivity_ci_low"], metrics["diagnosis_referable_sensitivity_ci_high"]) == (
        pytest.approx(wilson_interval(2, 4))
    )
    assert (metrics["diagnosis_any_dr_specificity_ci_low"], metrics["diagnosis_any_dr_specificity_ci_high"]) == (
        pytest.approx(wilson_interval(1, 2))
    )
    assert metrics["diagnosis_non_grade_answers"] == 1


@pytest.mark.parametrize(("task", "from_grade"), [("referable", 2), ("any_dr", 1)])
def test_screening_metrics_match_sklearn_on_random_cases(task, from_grade):
    rng = np.random.default_rng(2)
    compared = 0
    for case in range(200):
        n = int(rng.integers(4, 80))
        reference = rng.integers(0, 5, size=n)
        predicted = rng.integers(0, 5, size=n)
        off_scale = rng.random(n) < 0.15
        prediction_text = ["not sure" if off else GRADES[p] for p, off in zip(predicted, off_scale, strict=True)]
        reference_positive = reference >= from_grade
        # The conservative rule: an off-scale answer is the wrong call for the eye.
        predicted_positive = np.where(off_scale, ~reference_positive, predicted >= from_grade)
        if reference_positive.all() or not reference_positive.any():
            continue
        sensitivity, specificity = sklearn_sensitivity_specificity(reference_positive, predicted_positive)
        metrics = grading_metrics(answers(list(reference)), prediction_text)
        assert metrics[f"diagnosis_{task}_sensitivity"] == pytest.approx(sensitivity), case
        assert metrics[f"diagnosis_{task}_specificity"] == pytest.approx(specificity), case
        positives, negatives = int(reference_positive.sum()), int((~reference_positive).sum())
        caught = round(sensitivity * positives)
        cleared = round(specificity * negatives)
        assert (
            metrics[f"diagnosis_{task}_sensitivity_ci_low"],
            metrics[f"diagnosis_{task}_sensitivity_ci_high"],
        ) == pytest.approx(wilson_interval(caught, positives))
        assert (
            metrics[f"diagnosis_{task}_specificity_ci_low"],
            metrics[f"diagnosis_{task}_specificity_ci_high"],
        ) == pytest.approx(wilson_interval(cleared, negatives))
        compared += 1
    assert compared > 150


def test_no_positive_references_leaves_sensitivity_out():
    # Only grades 0 and 1: no referable eye, so referable sensitivity is undefined (left out, not 0 or NaN).
    metrics = grading_metrics(answers([0, 1, 1, 0]), answers([0, 1, 3, 0]))
    assert not any(key.startswith("diagnosis_referable_sensitivity") for key in metrics)
    assert metrics["diagnosis_referable_specificity"] == pytest.approx(3 / 4)
    assert metrics["diagnosis_any_dr_sensitivity"] == 1.0
    # Only healthy eyes: no sensitivity at all; a healthy-only set with every answer right.
    healthy = grading_metrics(answers([0, 0]), answers([0, 0]))
    assert not any("sensitivity" in key for key in healthy)
    assert healthy["diagnosis_referable_specificity"] == healthy["diagnosis_any_dr_specificity"] == 1.0
    # Only referable eyes: no specificity.
    sick = grading_metrics(answers([3, 4]), answers([4, 4]))
    assert not any("specificity" in key for key in sick)


def test_rows_without_a_grade_reference_are_left_out_and_case_and_punctuation_do_not_matter():
    reference = answers([0, 2, 4]) + ["yes", "moderate npdr"]
    predicted = ["Healthy retina.", "MODERATE DR", "the proliferative dr", "yes", "moderate dr"]
    metrics = grading_metrics(reference, predicted)
    assert metrics == grading_metrics(answers([0, 2, 4]), answers([0, 2, 4]))
    assert metrics["diagnosis_qwk"] == 1.0 and metrics["diagnosis_non_grade_answers"] == 0
    assert grading_metrics(["yes"], ["no"]) == {}
    assert grading_metrics([], []) == {}


def test_keys_and_other_label_sets():
    metrics = grading_metrics(answers([0, 1, 2, 3, 4, 4]), answers([0, 2, 2, 3, 1, 4]))
    assert tuple(key.removeprefix("diagnosis_") for key in metrics) == GRADING_KEYS
    assert type(metrics["diagnosis_non_grade_answers"]) is int
    # Another ordered scale: kappa over its grades, no ICDR screening thresholds.
    three = grading_metrics(["low", "mid", "high"], ["low", "high", "high"], labels=["low", "mid", "high"])
    expected = cohen_kappa_score([0, 1, 2], [0, 2, 2], weights="quadratic")
    assert three == {"diagnosis_qwk": pytest.approx(expected), "diagnosis_non_grade_answers": 0}
    prefixed = grading_metrics(["mild dr"], ["mild dr"], labels=DEFAULT_DIAGNOSIS_LABELS, prefix="x_")
    assert prefixed["x_non_grade_answers"] == 0 and all(key.startswith("x_") for key in prefixed)
    with pytest.raises(ValueError, match="references"):
        grading_metrics(["mild dr"], [])
    with pytest.raises(ValueError, match="normalise to the same"):
        grading_metrics([], [], labels=["mild dr", "Mild DR."])


def test_format_grading_lines():
    metrics = grading_metrics(answers([0, 0, 1, 2, 3, 4]), answers([0, 0, 1, 2, 3, 4]))
    lines = format_grading(metrics)
    assert lines[0] == "quadratic weighted kappa 1.000"
    assert lines[1].startswith("referable DR (moderate or worse): sensitivity 1.000 (95% CI 0.439-1.000)")
    assert lines[-1] == "answers that are not a grade: 0"
    assert format_grading({}) == []
    only_healthy = format_grading(grading_metrics(answers([0]), answers([0])))
    assert "sensitivity n/a" in only_healthy[1] and only_healthy[0] == "quadratic weighted kappa n/a"
