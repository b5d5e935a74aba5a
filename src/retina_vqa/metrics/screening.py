"""Screening evaluation of DR grade probabilities: the grade-wise AUROC, referable-DR operating points fitted on
validation rows and applied to held-out rows, the file that carries them from one to the other, and the ROC curve.

* `macro_ovr_auroc`: one-vs-rest AUROC of each ICDR grade (0-4) from each row's probability of that grade,
  averaged over the grades that have rows of both classes (RETFound's DR metric). Rank form (Mann-Whitney), ties
  counted half, as `calibration.roc_auc`, which it uses.
* Operating points on P(referable) (referable = grade >= 2, moderate NPDR or worse). A screening programme does
  not run at a threshold of 0.5 but at one chosen for a target, e.g. 97.5% sensitivity, on a development set and
  then frozen, so that the held-out numbers are honest (the two operating points of Gulshan et al. 2016).
  `parse_operating_points` reads the targets of ``--operating_points``, `choose_operating_points` fits one
  threshold per target on the validation rows, `save_operating_points` / `load_operating_points` keep them in
  ``operating_points.json``, and `apply_operating_points` measures them on other rows with 95% Wilson intervals.
* `roc_points`: the ROC curve of P(referable), for a plot.

Tie rule, everywhere: an eye is referred when ``p_referable >= threshold``. The candidate thresholds are the
distinct P(referable) values of the fitting rows (the thresholds of the ROC curve): each is the point where some
row starts to be referred, and any threshold between two of them refers the same fitting rows.

Inputs are checked rather than coerced: a NaN probability, a label that is not 0/1, or a fitting set without both
classes raises a ValueError that says which; a measure that held-out rows cannot define (sensitivity without a
referable eye) is left out of the metrics, as in `grading.py`, with its counts kept and a warning logged.

Numpy only (no torch, no scikit-learn at run time; the tests compare against scikit-learn).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from .calibration import referable_probability, roc_auc
from .grading import ICDR_GRADES, SCREENING_TASKS, answer_grades, wilson_interval

__all__ = [
    "MEASURES",
    "OPERATING_POINTS_FILE",
    "OPERATING_POINTS_VERSION",
    "OperatingPoint",
    "RocPoints",
    "apply_operating_points",
    "choose_operating_points",
    "load_operating_points",
    "macro_ovr_auroc",
    "parse_operating_points",
    "roc_points",
    "save_operating_points",
]

logger = logging.getLogger(__name__)

OPERATING_POINTS_FILE = "operating_points.json"
OPERATING_POINTS_VERSION = 1
# The measures a target can fix; the operating point is named after it as in the screening literature.
MEASURES = ("sensitivity", "specificity")
FLAG = "--operating_points"
FLAG_EXAMPLE = f"{FLAG} sensitivity=0.975,specificity=0.98"


# ---------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------


def _scores(values: Sequence[float] | np.ndarray) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"p_referable must be one value per row (1-D), got shape {scores.shape}.")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(
            f"p_referable is NaN or infinite at {bad.size} of {scores.size} rows (first: row {bad[0]}): "
            "drop or re-score those rows; a missing probability is not a screening call."
        )
    return scores


def _labels(values: Sequence[bool] | np.ndarray, rows: int) -> np.ndarray:
    labels = np.asarray(values)
    if labels.shape != (rows,):
        raise ValueError(f"Got {labels.shape[0] if labels.ndim else 0} referable labels for {rows} rows.")
    if labels.dtype != bool:
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"referable must be True/False (or 1/0) per row, got values {sorted(set(labels.tolist()))[:6]}: "
                "pass grades >= 2, not the grades."
            )
        labels = labels.astype(bool)
    return labels


def _checked_targets(targets: Mapping[str, float]) -> dict[str, float]:
    checked = {}
    for measure, target in targets.items():
        if measure not in MEASURES:
            raise ValueError(
                f"{FLAG}: unknown measure {measure!r}; a target fixes one of {', '.join(MEASURES)} "
                f"(e.g. {FLAG_EXAMPLE})."
            )
        if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0.0 < target <= 1.0:
            raise ValueError(
                f"{FLAG}: the {measure} target must be a fraction in (0, 1], got {target!r} "
                f"(write 0.975 for 97.5%, e.g. {FLAG_EXAMPLE})."
            )
        checked[measure] = float(target)
    return checked


# ---------------------------------------------------------------------------------------------------------
# Grade-wise AUROC
# ---------------------------------------------------------------------------------------------------------


def grade_probabilities(answers: Sequence[str], probabilities: Sequence[float]) -> np.ndarray:
    """A ranked diagnosis answer's candidate probabilities summed per ICDR grade (`metrics.grading.answer_grades`:
    candidates that are no grade left out): one row of `macro_ovr_auroc`'s input."""
    by_grade = np.zeros(ICDR_GRADES)
    grades = answer_grades(answers)
    known = grades >= 0
    np.add.at(by_grade, grades[known], np.asarray(probabilities, dtype=np.float64)[known])
    return by_grade


def macro_ovr_auroc(
    grade_probabilities: Sequence[Sequence[float]] | np.ndarray, grades: Sequence[int] | np.ndarray
) -> tuple[float, dict[int, float]]:
    """One-vs-rest AUROC per grade, macro-averaged (as ``sklearn.metrics.roc_auc_score(grades, probabilities,
    multi_class="ovr", average="macro")`` when every grade occurs).

    Args:
        grade_probabilities: ``(rows, grades)``, each row's probability of each grade (ICDR 0-4: 5 columns).
            Only the ranking within a column matters, so rows need not sum to 1.
        grades: The reference grade of each row, ``0 .. grades - 1`` (leave ungradable rows out first).

    Returns:
        ``(macro, per_grade)``: ``per_grade[g]`` is the AUROC of "grade g" against every other row, for each grade
        with rows of both classes (a grade no row has, or every row has, has no AUROC and is left out); ``macro``
        is their mean, NaN when no grade has one (all rows share one grade).
    """
    probabilities = np.asarray(grade_probabilities, dtype=np.float64)
    reference = np.asarray(grades)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(
            f"grade_probabilities must be (rows, grades) with at least two grades (ICDR: {ICDR_GRADES}), "
            f"got shape {probabilities.shape}."
        )
    rows, num_grades = probabilities.shape
    if not rows:
        raise ValueError("The grade-wise AUROC needs at least one row.")
    if reference.shape != (rows,):
        raise ValueError(f"Got {reference.shape[0] if reference.ndim else 0} grades for {rows} probability rows.")
    if not np.issubdtype(reference.dtype, np.integer) or reference.min() < 0 or reference.max() >= num_grades:
        raise ValueError(
            f"Every grade must be an integer in 0..{num_grades - 1} (one per probability column), got "
            f"{sorted(set(reference.tolist()))[:8]}: leave rows without a grade out."
        )
    bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if bad.size:
        raise ValueError(
            f"grade_probabilities has NaN or infinite values in {bad.size} of {rows} rows (first: row {bad[0]})."
        )
    per_grade = {}
    for grade in range(num_grades):
        positive = reference == grade
        if positive.any() and not positive.all():
            per_grade[grade] = roc_auc(probabilities[:, grade], positive)
    if not per_grade:
        logger.warning(
            "No grade-wise AUROC: all %d rows are grade %d, no grade has rows of both classes.", rows, reference[0]
        )
        return math.nan, {}
    return float(np.mean(list(per_grade.values()))), per_grade


# ---------------------------------------------------------------------------------------------------------
# Operating points
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """A referral threshold on P(referable) and the numbers it reached on the rows it was fitted on.

    ``name`` is ``high_sensitivity`` (fitted to a sensitivity target) or ``high_specificity``; ``target`` is
    that target; ``sensitivity`` / ``specificity`` are measured on the fitting (validation) rows. An eye is
    referred when ``p_referable >= threshold``.
    """

    name: str
    target: float
    threshold: float
    sensitivity: float
    specificity: float

    @property
    def measure(self) -> str:
        """The measure the target fixes: ``sensitivity`` or ``specificity``."""
        return self.name.removeprefix("high_")


def parse_operating_points(text: str) -> dict[str, float]:
    """Targets from the ``--operating_points`` flag: ``"sensitivity=0.975,specificity=0.98"`` ->
    ``{"sensitivity": 0.975, "specificity": 0.98}``. An empty string means no operating point."""
    targets: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        measure, equals, value = (s.strip() for s in part.partition("="))
        if not equals:
            raise ValueError(f"{FLAG}: {part!r} is not measure=target (e.g. {FLAG_EXAMPLE}).")
        if measure in targets:
            raise ValueError(f"{FLAG}: {measure} is given twice in {text!r}; give each measure once.")
        try:
            target = float(value)
        except ValueError:
            raise ValueError(f"{FLAG}: the {measure} target {value!r} is not a number (e.g. {FLAG_EXAMPLE}).") from None
        targets[measure] = target
    return _checked_targets(targets)


def _counts(thresholds: np.ndarray, scores: np.ndarray, referable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True positives and true negatives at each threshold (a row is referred when its score >= threshold)."""
    positive, negative = np.sort(scores[referable]), np.sort(scores[~referable])
    # searchsorted "left" counts the scores strictly below each threshold: those rows are not referred.
    true_positives = positive.size - np.searchsorted(positive, thresholds, side="left")
    true_negatives = np.searchsorted(negative, thresholds, side="left")
    return true_positives, true_negatives


def choose_operating_points(
    p_referable: Sequence[float] | np.ndarray, referable: Sequence[bool] | np.ndarray, targets: Mapping[str, float]
) -> list[OperatingPoint]:
    """Fit one threshold per target on these (validation) rows.

    A sensitivity target gets the highest threshold whose sensitivity on these rows is >= the target (the most
    specific point that still meets it); a specificity target the lowest threshold whose specificity is >= the
    target (the most sensitive one). Thresholds are chosen among the distinct P(referable) values of these rows
    (module docstring), so one candidate further (the next higher value for a sensitivity target, the next lower for
    a specificity target) misses the target. Only these rows are read: fit on validation rows, never on the rows
    that will be reported.

    Args:
        p_referable: P(referable DR) per row (any score that grows with it works; finite).
        referable: Whether each row's reference grade is referable (grade >= 2).
        targets: ``{"sensitivity": 0.975, "specificity": 0.98}`` (see `parse_operating_points`), in (0, 1].

    Returns:
        One `OperatingPoint` per target, in the targets' order.
    """
    checked = _checked_targets(targets)
    scores = _scores(p_referable)
    labels = _labels(referable, scores.size)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        raise ValueError(
            f"Operating points need referable and non-referable rows to fit on, got {positives} referable and "
            f"{negatives} non-referable of {scores.size}: fit on a validation set with both."
        )
    candidates = np.unique(scores)  # ascending
    true_positives, true_negatives = _counts(candidates, scores, labels)
    sensitivity, specificity = true_positives / positives, true_negatives / negatives
    points = []
    for measure, target in checked.items():
        if measure == "sensitivity":
            # Sensitivity falls as the threshold rises; the lowest candidate refers every row (sensitivity 1).
            index = int(np.flatnonzero(sensitivity >= target)[-1])
        else:
            meets = np.flatnonzero(specificity >= target)
            if not meets.size:
                raise ValueError(
                    f"{FLAG}: specificity {target} is out of reach on these {scores.size} rows: the highest "
                    f"P(referable) ({candidates[-1]:.6g}) belongs to {negatives - int(true_negatives[-1])} of the "
                    f"{negatives} non-referable rows, so only referring no row would meet it. Lower the target."
                )
            index = int(meets[0])
        points.append(
            OperatingPoint(
                name=f"high_{measure}",
                target=target,
                threshold=float(candidates[index]),
                sensitivity=float(sensitivity[index]),
                specificity=float(specificity[index]),
            )
        )
    return points


def apply_operating_points(
    points: Sequence[OperatingPoint],
    p_referable: Sequence[float] | np.ndarray,
    referable: Sequence[bool] | np.ndarray,
) -> dict[str, float | int]:
    """Sensitivity and specificity of held-out rows at each saved threshold, with 95% Wilson intervals.

    Returns, per point, ``operating_point_<name>_threshold``; ``..._sensitivity`` and ``..._specificity`` each
    with ``_ci_low`` / ``_ci_high``; the counts ``..._tp``, ``..._fn``, ``..._tn``, ``..._fp`` (ints). Sensitivity
    and its interval are left out without a referable row, specificity without a non-referable one (a warning
    says so; the counts show it).
    """
    scores = _scores(p_referable)
    labels = _labels(referable, scores.size)
    if not scores.size:
        raise ValueError("Applying operating points needs at least one row.")
    metrics: dict[str, float | int] = {}
    for point in points:
        key = f"operating_point_{point.name}"
        referred = scores >= point.threshold
        counts = {
            "tp": int(np.sum(labels & referred)),
            "fn": int(np.sum(labels & ~referred)),
            "tn": int(np.sum(~labels & ~referred)),
            "fp": int(np.sum(~labels & referred)),
        }
        metrics[f"{key}_threshold"] = point.threshold
        for measure, hits, misses, rows in (
            ("sensitivity", counts["tp"], counts["fn"], "referable"),
            ("specificity", counts["tn"], counts["fp"], "non-referable"),
        ):
            if hits + misses == 0:
                logger.warning("%s_%s left out: no %s row among the %d rows.", key, measure, rows, scores.size)
                continue
            low, high = wilson_interval(hits, hits + misses)
            metrics[f"{key}_{measure}"] = hits / (hits + misses)
            metrics[f"{key}_{measure}_ci_low"] = low
            metrics[f"{key}_{measure}_ci_high"] = high
        metrics.update({f"{key}_{name}": count for name, count in counts.items()})
    return metrics


def save_operating_points(points: Sequence[OperatingPoint], folder: str | os.PathLike[str]) -> str:
    """Write `points` to ``<folder>/operating_points.json`` (the folder is made if needed); returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, OPERATING_POINTS_FILE)
    content = {
        "version": OPERATING_POINTS_VERSION,
        "score": "p_referable (P(grade >= 2))",
        "rule": "refer when p_referable >= threshold",
        "operating_points": [asdict(point) for point in points],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
    return path


def load_operating_points(folder: str | os.PathLike[str]) -> list[OperatingPoint]:
    """Read ``<folder>/operating_points.json`` as written by `save_operating_points`; a file that is not one
    (bad JSON, another version, a missing or out-of-range field) raises a ValueError naming the file and field."""
    path = os.path.join(folder, OPERATING_POINTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {OPERATING_POINTS_FILE} in {os.fspath(folder)!r}: fit the operating points on the validation set "
            f"first ({FLAG}), or point to the folder that has them."
        )
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): write it again with save_operating_points.") from None

    def malformed(what: str) -> ValueError:
        return ValueError(f"{path}: {what}. Fit the operating points again to rewrite it.")

    if not isinstance(content, dict):
        raise malformed("the file must hold a JSON object")
    if content.get("version") != OPERATING_POINTS_VERSION:
        raise malformed(f"version is {content.get('version')!r}, this code reads version {OPERATING_POINTS_VERSION}")
    entries = content.get("operating_points")
    if not isinstance(entries, list):
        raise malformed("'operating_points' must be a list")
    points = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise malformed(f"operating point {i} is not an object")
        missing = [field.name for field in fields(OperatingPoint) if field.name not in entry]
        if missing:
            raise malformed(f"operating point {i} lacks {', '.join(missing)}")
        name = entry["name"]
        if name not in {f"high_{measure}" for measure in MEASURES}:
            raise malformed(f"operating point {i} has name {name!r}, not high_sensitivity or high_specificity")
        measured = {}
        for field in ("target", "threshold", "sensitivity", "specificity"):
            value = entry[field]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise malformed(f"operating point {i} ({name}) has {field} {value!r}, not a finite number")
            measured[field] = float(value)
        for field in ("sensitivity", "specificity"):
            if not 0.0 <= measured[field] <= 1.0:
                raise malformed(f"operating point {i} ({name}) has {field} {measured[field]} outside [0, 1]")
        if not 0.0 < measured["target"] <= 1.0:
            raise malformed(f"operating point {i} ({name}) has target {measured['target']} outside (0, 1]")
        if any(point.name == name for point in points):
            raise malformed(f"operating point {name} appears twice")
        points.append(OperatingPoint(name=name, **measured))
    return points


# ---------------------------------------------------------------------------------------------------------
# ROC curve
# ---------------------------------------------------------------------------------------------------------


class RocPoints(NamedTuple):
    """The ROC curve of P(referable): point i refers the rows with ``p_referable >= thresholds[i]``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_points(p_referable: Sequence[float] | np.ndarray, referable: Sequence[bool] | np.ndarray) -> RocPoints:
    """Every point of the ROC curve, from (0, 0) (threshold ``inf``: no eye referred) through one point per
    distinct P(referable), highest first, to (1, 1) (as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``).
    Needs referable and non-referable rows (a rate is undefined without its class)."""
    scores = _scores(p_referable)
    labels = _labels(referable, scores.size)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        raise ValueError(
            f"An ROC curve needs referable and non-referable rows, got {positives} referable and {negatives} "
            "non-referable."
        )
    thresholds = np.unique(scores)[::-1]
    true_positives, true_negatives = _counts(thresholds, scores, labels)
    return RocPoints(
        fpr=np.concatenate([[0.0], (negatives - true_negatives) / negatives]),
        tpr=np.concatenate([[0.0], true_positives / positives]),
        thresholds=np.concatenate([[np.inf], thresholds]),
    )


def referral(answer_scores: Mapping[str, float], points: Sequence[OperatingPoint]) -> dict[str, Any]:
    """The referral a diagnosis answer's candidate probabilities give at each saved operating point:
    ``{"p_referable": ..., "<point name>": "refer" | "do not refer", ...}`` (refer when P(referable), the summed
    probability of the referable grades, reaches the point's threshold)."""
    p = referable_probability(list(answer_scores), list(answer_scores.values()))
    decision: dict[str, Any] = {"p_referable": p}
    for point in points:
        decision[point.name] = "refer" if p >= point.threshold else "do not refer"
    return decision


def find_operating_points(model_name_or_path: str | os.PathLike[str]) -> list[OperatingPoint] | None:
    """The operating points saved with a model (its folder, or a hub repository), None when it has none."""
    name = os.fspath(model_name_or_path)
    if not name:
        return None
    if os.path.isdir(name):
        return load_operating_points(name) if os.path.isfile(os.path.join(name, OPERATING_POINTS_FILE)) else None
    try:  # a hub id
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name, OPERATING_POINTS_FILE)
    except Exception:  # no such file in the repository, offline, no such repository: no points
        return None
    return load_operating_points(os.path.dirname(path))


# Patient-level screening (the eye-level tasks of metrics.grading, SCREENING_TASKS): a patient is referable when
# either eye is (the worse eye), and is referred when either eye's answer refers (IDx-DR and EyeArt report per
# patient; an encounter is non-referable only if both eyes are).


def patient_screening_metrics(
    references: Sequence[str], answers: Sequence[str], patients: Sequence[Any], labels: Sequence[str]
) -> dict[str, float | int]:
    """Referable (grade >= 2) and any-DR (grade >= 1) sensitivity and specificity per patient, worse eye, with 95%
    Wilson intervals: ``patient_referable_sensitivity``, ``..._ci_low`` / ``_ci_high``, ``patient_..._specificity``,
    and ``patients`` (the patients counted).

    Rows whose reference is not a grade of `labels`, or that name no patient (None / empty), are left out. An answer
    that is not a grade is the wrong call for its eye (as at eye level, `metrics.grading`): it refers a
    non-referable eye and misses a referable one.
    """

    if not len(references) == len(answers) == len(patients):
        raise ValueError(f"{len(references)} references, {len(answers)} answers and {len(patients)} patients.")
    reference_grades, answer_grades_ = answer_grades(references, labels), answer_grades(answers, labels)
    metrics: dict[str, float | int] = {}
    for level, threshold in SCREENING_TASKS:
        truth: dict[Any, bool] = {}
        called: dict[Any, bool] = {}
        for patient, reference, answer in zip(patients, reference_grades, answer_grades_, strict=True):
            if reference < 0 or patient is None or patient == "":
                continue
            positive = bool(reference >= threshold)
            refer = (answer >= threshold) if answer >= 0 else not positive
            truth[patient] = truth.get(patient, False) or positive
            called[patient] = called.get(patient, False) or bool(refer)
        metrics["patients"] = len(truth)
        for measure, wanted in (("sensitivity", True), ("specificity", False)):
            group = [p for p, t in truth.items() if t is wanted]
            if not group:
                continue
            right = sum(called[p] is wanted for p in group)
            low, high = wilson_interval(right, len(group))
            key = f"patient_{level}_{measure}"
            metrics.update({key: right / len(group), f"{key}_ci_low": low, f"{key}_ci_high": high})
    return metrics
