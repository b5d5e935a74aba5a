"""Screening evaluation: the grade-wise AUROC and the ROC curve against scikit-learn, operating points that meet
their targets at the extreme threshold and read only their fitting rows, their held-out counts against
scikit-learn's confusion matrix, the operating-points file, and the errors of degenerate inputs."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from retina_vqa.metrics.grading import wilson_interval
from retina_vqa.metrics.screening import (
    OPERATING_POINTS_FILE,
    OperatingPoint,
    apply_operating_points,
    choose_operating_points,
    load_operating_points,
    macro_ovr_auroc,
    parse_operating_points,
    roc_points,
    save_operating_points,
)


def scored_rows(generator: np.random.Generator, rows: int, decimals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """P(referable) that is informative but imperfect, rounded so that ties occur within and across classes."""
    referable = generator.random(rows) < 0.35
    scores = np.clip(generator.normal(0.35 + 0.3 * referable, 0.2), 0.0, 1.0)
    return np.round(scores, decimals), referable


def rates(scores: np.ndarray, referable: np.ndarray, threshold: float) -> tuple[float, float]:
    tn, fp, fn, tp = confusion_matrix(referable, scores >= threshold, labels=[False, True]).ravel()
    return tp / (tp + fn), tn / (tn + fp)


# ---------------------------------------------------------------------------------------------------------
# Grade-wise AUROC
# ---------------------------------------------------------------------------------------------------------


def test_macro_ovr_auroc_equals_scikit_learn():
    generator = np.random.default_rng(0)
    for trial in range(20):
        grades = np.concatenate([np.arange(5), generator.integers(0, 5, 55)])  # every grade occurs
        logits = generator.normal(size=(60, 5)) + 1.5 * np.eye(5)[grades]
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        if trial % 2:
            probabilities = np.round(probabilities, 1)  # ties within each column
            probabilities /= probabilities.sum(axis=1, keepdims=True)
        macro, per_grade = macro_ovr_auroc(probabilities, grades)
        expected = roc_auc_score(grades, probabilities, multi_class="ovr", average="macro")
        assert macro == pytest.approx(expected, abs=1e-12)
        assert sorted(per_grade) == [0, 1, 2, 3, 4]
        for grade, auroc in per_grade.items():
            assert auroc == pytest.approx(roc_auc_score(grades == grade, probabilities[:, grade]), abs=1e-12)


def test_macro_ovr_auroc_averages_only_grades_with_both_classes():
    probabilities = np.array(
        [[0.7, 0.1, 0.1, 0.05, 0.05], [0.2, 0.6, 0.1, 0.05, 0.05], [0.1, 0.3, 0.5, 0.05, 0.05], [0.5, 0.1, 0.3, 0, 0.1]]
    )
    grades = np.array([0, 1, 2, 2])  # grades 3 and 4 have no row: no AUROC
    macro, per_grade = macro_ovr_auroc(probabilities, grades)
    assert sorted(per_grade) == [0, 1, 2]
    # Grade 2: positives score 0.5, 0.3, negatives 0.1, 0.1 -> 1. Grade 0: 0.7 against 0.2, 0.1, 0.5 -> 1.
    assert per_grade[0] == 1.0 and per_grade[1] == 1.0 and per_grade[2] == 1.0 and macro == 1.0
    macro, per_grade = macro_ovr_auroc(probabilities[:2], [1, 1])  # one grade only
    assert math.isnan(macro) and per_grade == {}
    with pytest.raises(ValueError, match="at least one row"):
        macro_ovr_auroc(np.zeros((0, 5)), [])
    with pytest.raises(ValueError, match="row 1"):
        macro_ovr_auroc([[0.5, 0.5], [np.nan, 0.5]], [0, 1])
    with pytest.raises(ValueError, match=r"0\.\.4"):
        macro_ovr_auroc(probabilities, [0, 1, 2, 5])
    with pytest.raises(ValueError, match="4 probability rows"):
        macro_ovr_auroc(probabilities, [0, 1, 2])


# ---------------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------------


def test_parse_operating_points():
    assert parse_operating_points("sensitivity=0.975,specificity=0.98") == {"sensitivity": 0.975, "specificity": 0.98}
    assert parse_operating_points(" specificity = 1 ") == {"specificity": 1.0}
    assert parse_operating_points("") == {}
    for text, fix in (
        ("sensitivity", "measure=target"),
        ("sens=0.9", "unknown measure 'sens'"),
        ("sensitivity=97.5", "write 0.975 for 97.5%"),
        ("sensitivity=0", r"in \(0, 1\]"),
        ("sensitivity=high", "not a number"),
        ("sensitivity=0.9,sensitivity=0.95", "given twice"),
    ):
        with pytest.raises(ValueError, match=fix) as error:
            parse_operating_points(text)
        assert "--operating_points" in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------


def test_operating_points_by_hand_and_the_tie_rule():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    referable = np.array([0, 0, 1, 0, 1, 0, 1, 1], dtype=bool)
    sensitive, specific = choose_operating_points(scores, referable, {"sensitivity": 0.75, "specificity": 1.0})
    # 3 of the 4 referable eyes (0.3, 0.5, 0.7, 0.8) need a threshold <= 0.5; the 4 others lie below it but 0.4.
    assert sensitive == OperatingPoint("high_sensitivity", 0.75, 0.5, 0.75, 0.75)
    # Every non-referable eye (highest 0.6) below the threshold: the lowest candidate above 0.6 is 0.7.
    assert specific == OperatingPoint("high_specificity", 1.0, 0.7, 0.5, 1.0)
    # A row refers when p >= threshold: a non-referable eye tied with the last referable one is referred too.
    (point,) = choose_operating_points([0.2, 0.5, 0.5, 0.9], [False, False, True, True], {"sensitivity": 1.0})
    assert (point.threshold, point.sensitivity, point.specificity) == (0.5, 1.0, 0.5)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.975, 1.0])
def test_thresholds_meet_their_targets_and_are_the_extreme_ones(target):
    generator = np.random.default_rng(int(target * 1000))
    for trial in range(10):
        scores, referable = scored_rows(generator, 80 + 20 * trial, decimals=1 + trial % 3)
        candidates = np.unique(scores)
        if rates(scores, referable, candidates[-1])[1] < target:
            # Even the highest candidate refers a non-referable eye too many: only referring no eye would do.
            with pytest.raises(ValueError, match="out of reach"):
                choose_operating_points(scores, referable, {"specificity": target})
            continue
        sensitive, specific = choose_operating_points(scores, referable, {"sensitivity": target, "specificity": target})
        for point in (sensitive, specific):
            assert (point.sensitivity, point.specificity) == pytest.approx(rates(scores, referable, point.threshold))
            assert point.threshold in candidates
        assert sensitive.sensitivity >= target
        higher = candidates[candidates > sensitive.threshold]
        # One step up refers fewer eyes and misses the target (above the highest score no eye is referred).
        assert (rates(scores, referable, higher[0])[0] if higher.size else 0.0) < target
        assert specific.specificity >= target
        lower = candidates[candidates < specific.threshold]
        assert rates(scores, referable, lower[-1])[1] < target  # the lowest candidate refers all: specificity 0


def test_fitting_reads_only_the_fitting_rows():
    generator = np.random.default_rng(1)
    scores, referable = scored_rows(generator, 600)
    validation, test = np.arange(300), np.arange(300, 600)
    targets = {"sensitivity": 0.95, "specificity": 0.9}
    points = choose_operating_points(scores[validation], referable[validation], targets)
    held_out = apply_operating_points(points, scores[test], referable[test])

    # Changing and reordering the test rows changes no threshold; only the held-out numbers move.
    changed_scores, changed_referable = scores.copy(), referable.copy()
    changed_scores[test] = generator.permutation(1.0 - scores[test])
    changed_referable[test] = generator.permutation(referable[test])
    assert choose_operating_points(changed_scores[validation], changed_referable[validation], targets) == points
    changed = apply_operating_points(points, changed_scores[test], changed_referable[test])
    for name in ("high_sensitivity", "high_specificity"):
        assert changed[f"operating_point_{name}_threshold"] == held_out[f"operating_point_{name}_threshold"]
    assert changed != held_out

    # The order of the validation rows does not matter either (ties included).
    order = generator.permutation(validation)
    assert choose_operating_points(scores[order], referable[order], targets) == points


# ---------------------------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------------------------


def test_apply_reproduces_scikit_learn_confusion_counts():
    generator = np.random.default_rng(2)
    validation_scores, validation_referable = scored_rows(generator, 200)
    points = choose_operating_points(
        validation_scores, validation_referable, parse_operating_points("sensitivity=0.975,specificity=0.98")
    )
    for _ in range(10):
        scores, referable = scored_rows(generator, int(generator.integers(30, 300)))
        metrics = apply_operating_points(points, scores, referable)
        for point in points:
            key = f"operating_point_{point.name}"
            tn, fp, fn, tp = confusion_matrix(referable, scores >= point.threshold, labels=[False, True]).ravel()
            assert [metrics[f"{key}_{c}"] for c in ("tp", "fn", "tn", "fp")] == [tp, fn, tn, fp]
            assert metrics[f"{key}_threshold"] == point.threshold
            assert metrics[f"{key}_sensitivity"] == tp / (tp + fn)
            assert metrics[f"{key}_specificity"] == tn / (tn + fp)
            assert (metrics[f"{key}_sensitivity_ci_low"], metrics[f"{key}_sensitivity_ci_high"]) == wilson_interval(
                tp, tp + fn
            )
            assert (metrics[f"{key}_specificity_ci_low"], metrics[f"{key}_specificity_ci_high"]) == wilson_interval(
                tn, tn + fp
            )
    # On its own fitting rows a point measures what it recorded.
    metrics = apply_operating_points(points, validation_scores, validation_referable)
    for point in points:
        assert metrics[f"operating_point_{point.name}_sensitivity"] == point.sensitivity
        assert metrics[f"operating_point_{point.name}_specificity"] == point.specificity


def test_degenerate_inputs_raise_or_leave_the_undefined_measure_out(caplog):
    scores, referable = [0.1, 0.4, 0.6, 0.9], [False, False, True, True]
    targets = {"sensitivity": 0.9}
    with pytest.raises(ValueError, match="0 referable and 4 non-referable"):
        choose_operating_points(scores, [False] * 4, targets)
    with pytest.raises(ValueError, match="4 referable and 0 non-referable"):
        choose_operating_points(scores, [True] * 4, targets)
    with pytest.raises(ValueError, match=r"NaN or infinite at 1 of 4 rows \(first: row 2\)"):
        choose_operating_points([0.1, 0.4, np.nan, 0.9], referable, targets)
    with pytest.raises(ValueError, match="grades >= 2, not the grades"):
        choose_operating_points(scores, [0, 1, 2, 3], targets)
    with pytest.raises(ValueError, match="3 referable labels for 4 rows"):
        choose_operating_points(scores, referable[:3], targets)
    with pytest.raises(ValueError, match="unknown measure"):
        choose_operating_points(scores, referable, {"ppv": 0.9})
    # The highest score is a non-referable eye's: specificity 1 only by referring no eye.
    with pytest.raises(ValueError, match="out of reach.*1 of the 2 non-referable.*Lower the target"):
        choose_operating_points([0.1, 0.4, 0.6, 0.9], [False, True, True, False], {"specificity": 1.0})

    points = choose_operating_points(scores, referable, {"sensitivity": 1.0, "specificity": 1.0})
    with caplog.at_level(logging.WARNING, logger="retina_vqa.metrics.screening"):
        metrics = apply_operating_points(points, [0.2, 0.7, 0.95], [False, False, False])
    key = "operating_point_high_sensitivity"
    assert f"{key}_sensitivity" not in metrics and f"{key}_sensitivity_ci_low" not in metrics
    assert metrics[f"{key}_tp"] == metrics[f"{key}_fn"] == 0 and metrics[f"{key}_specificity"] == pytest.approx(1 / 3)
    assert "no referable row among the 3 rows" in caplog.text
    assert not any(isinstance(v, float) and math.isnan(v) for v in metrics.values())
    with pytest.raises(ValueError, match="row 0"):
        apply_operating_points(points, [np.nan, 0.5], [True, False])
    with pytest.raises(ValueError, match="at least one row"):
        apply_operating_points(points, [], [])


# ---------------------------------------------------------------------------------------------------------
# The operating-points file
# ---------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    generator = np.random.default_rng(3)
    scores = generator.random(100)  # full-precision thresholds must survive JSON exactly
    referable = scores + generator.normal(0, 0.3, 100) > 0.6
    points = choose_operating_points(scores, referable, {"sensitivity": 0.975, "specificity": 0.98})
    path = save_operating_points(points, tmp_path / "run")
    assert path == str(tmp_path / "run" / OPERATING_POINTS_FILE)
    content = json.loads((tmp_path / "run" / OPERATING_POINTS_FILE).read_text())
    assert content["version"] == 1 and content["rule"] == "refer when p_referable >= threshold"
    assert [entry["name"] for entry in content["operating_points"]] == ["high_sensitivity", "high_specificity"]
    loaded = load_operating_points(tmp_path / "run")
    assert loaded == points and loaded[0].measure == "sensitivity"
    assert apply_operating_points(loaded, scores, referable) == apply_operating_points(points, scores, referable)


def test_load_refuses_a_malformed_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No operating_points.json.*validation set"):
        load_operating_points(tmp_path)
    path = tmp_path / OPERATING_POINTS_FILE
    good = {"name": "high_sensitivity", "target": 0.9, "threshold": 0.3, "sensitivity": 0.92, "specificity": 0.7}
    for content, problem in (
        ("{not json", "not valid JSON"),
        ([good], "must hold a JSON object"),
        ({"version": 2, "operating_points": [good]}, "version is 2"),
        ({"version": 1}, "'operating_points' must be a list"),
        ({"version": 1, "operating_points": [{**good, "threshold": None}]}, "threshold None, not a finite number"),
        ({"version": 1, "operating_points": [{**good, "threshold": float("nan")}]}, "threshold nan"),
        ({"version": 1, "operating_points": [{k: v for k, v in good.items() if k != "target"}]}, "lacks target"),
        ({"version": 1, "operating_points": [{**good, "name": "youden"}]}, "name 'youden'"),
        ({"version": 1, "operating_points": [{**good, "target": 97.5}]}, r"target 97.5 outside \(0, 1\]"),
        ({"version": 1, "operating_points": [good, good]}, "appears twice"),
    ):
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ValueError, match=problem) as error:
            load_operating_points(tmp_path)
        assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------------------
# ROC curve and imports
# ---------------------------------------------------------------------------------------------------------


def test_roc_points_equal_scikit_learn():
    generator = np.random.default_rng(4)
    for trial in range(10):
        scores, referable = scored_rows(generator, 120, decimals=1 + trial % 3)
        fpr, tpr, thresholds = roc_points(scores, referable)
        expected = roc_curve(referable, scores, drop_intermediate=False)
        for got, want in zip((fpr, tpr, thresholds), expected, strict=True):
            np.testing.assert_array_equal(got, want)
        assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(referable, scores), abs=1e-12)
    with pytest.raises(ValueError, match="0 referable and 2 non-referable"):
        roc_points([0.1, 0.2], [False, False])


def test_screening_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import retina_vqa.metrics.screening"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_patients_are_scored_by_their_worse_eye():
    from retina_vqa.metrics.screening import patient_screening_metrics
    from retina_vqa.questions import DIAGNOSIS_ANSWERS as G

    # p1: left eye referable, called referable through the right eye's answer; p2: healthy, one eye over-called;
    # p3: referable, both eyes missed; p4: healthy, a non-grade answer (the wrong call: refers); p5: no patient id.
    references = [G[3], G[0], G[0], G[0], G[2], G[1], G[0], G[0], G[4]]
    answers = [G[0], G[2], G[0], G[2], G[1], G[0], "yes", G[0], G[4]]
    patients = ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4", None]
    metrics = patient_screening_metrics(references, answers, patients, G)
    assert metrics["patients"] == 4
    assert metrics["patient_referable_sensitivity"] == pytest.approx(1 / 2)  # p1 referred, p3 missed
    assert metrics["patient_referable_specificity"] == pytest.approx(0 / 2)  # p2 and p4 both referred
    assert metrics["patient_any_dr_sensitivity"] == pytest.approx(2 / 2)  # p1 (grade 3), p3 (grade 2, called 1)
    assert metrics["patient_referable_sensitivity_ci_low"] < 0.5 < metrics["patient_referable_sensitivity_ci_high"]
    with pytest.raises(ValueError, match="patients"):
        patient_screening_metrics(references, answers, patients[:-1], G)
