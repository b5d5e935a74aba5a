"""The field's metrics for diabetic-retinopathy grading: quadratic weighted kappa over the five ICDR grades (the
Kaggle EyePACS / APTOS metric) and screening sensitivity / specificity with 95% Wilson score intervals, for
referable DR (moderate or worse, grade >= 2) and any DR (grade >= 1).

Answers are compared after `normalize_answer`; a grade is the position of its label in the label set, lowest
first (``healthy retina``, ``mild dr``, ``moderate dr``, ``severe dr``, ``proliferative dr`` = ICDR 0-4, the
answers of `questions.DIAGNOSIS_ANSWERS`). Rows whose *reference* is not a grade are not graded (`vqa.py`
warns about them). A *predicted* answer that is not a grade ("", "yes", "moderate npdr") is always wrong, and
counted (``diagnosis_non_grade_answers``):

* kappa: it is scored as the grade farthest from its reference (grade 4 for references 0 and 1, grade 0 for
  references 2, 3 and 4; for grade 2 both ends are two grades away and 0 is taken, the side that also makes it a
  missed referable eye): the largest disagreement any answer could have on that eye (it also shifts the expected
  disagreement through the prediction marginal, as any wrong grade does);
* sensitivity / specificity: it is the wrong screening call whatever the eye, a miss (false negative) on an
  eye that is positive for the threshold and a false alarm (false positive) on one that is negative.

Undefined values are left out rather than reported as NaN or 0, as `vqa.compute_vqa_metrics` leaves out the keys
of empty groups (and ``all_results.json`` stays plain JSON): sensitivity and its interval without a positive
reference, specificity without a negative one, kappa when references and predictions all lie on one and the
same grade (no disagreement is expected by chance: ``cohen_kappa_score`` returns NaN there).

Pure numpy: no scikit-learn at run time (the tests compare against it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .normalize import normalize_answer
from .scores import DEFAULT_DIAGNOSIS_LABELS, label_index

# 97.5th percentile of the standard normal: a two-sided 95% interval (scipy.stats.norm.ppf(0.975)).
WILSON_Z_95 = 1.959963984540054
# ICDR: 2 = moderate non-proliferative DR, the usual referral threshold of screening programmes; 1 = mild.
REFERABLE_FROM_GRADE = 2
ANY_DR_FROM_GRADE = 1
# Screening tasks reported, as (key part, first positive grade). They need the five ICDR grades.
SCREENING_TASKS = (("referable", REFERABLE_FROM_GRADE), ("any_dr", ANY_DR_FROM_GRADE))
ICDR_GRADES = 5
NON_GRADE = -1

# Every key `grading_metrics` can return, without its prefix, in the order a table lists them.
GRADING_KEYS: tuple[str, ...] = (
    "qwk",
    *(
        f"{task}_{measure}{part}"
        for task, _ in SCREENING_TASKS
        for measure in ("sensitivity", "specificity")
        for part in ("", "_ci_low", "_ci_high")
    ),
    "non_grade_answers",
)


def answer_grades(answers: Sequence[str], labels: Sequence[str] = DEFAULT_DIAGNOSIS_LABELS) -> np.ndarray:
    """The grade (index into `labels`) of each answer after `normalize_answer`, :data:`NON_GRADE` (-1) for an
    answer that is none of them."""
    index = label_index(labels)
    return np.array([index.get(normalize_answer(str(answer)), NON_GRADE) for answer in answers], dtype=np.int64)


def farthest_grade(reference_grades: np.ndarray, num_grades: int) -> np.ndarray:
    """The grade farthest from each reference grade; ties (the middle grade) go to grade 0."""
    reference_grades = np.asarray(reference_grades)
    return np.where(reference_grades >= (num_grades - 1) / 2, 0, num_grades - 1)


def quadratic_weighted_kappa(
    reference_grades: Sequence[int], predicted_grades: Sequence[int], num_grades: int
) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2`` over grades ``0 .. num_grades - 1`` (as
    ``sklearn.metrics.cohen_kappa_score(weights="quadratic", labels=range(num_grades))``).

    ``1 - sum(w * O) / sum(w * E)`` with ``O`` the observed grade confusion counts and ``E`` the counts expected
    from the two marginals alone. Returns NaN when ``sum(w * E)`` is 0 (both sides all on one grade).
    """
    reference = np.asarray(reference_grades, dtype=np.int64)
    predicted = np.asarray(predicted_grades, dtype=np.int64)
    if reference.shape != predicted.shape or reference.ndim != 1:
        raise ValueError(f"Got {reference.shape} reference grades but {predicted.shape} predicted grades.")
    if reference.size == 0:
        raise ValueError("Quadratic weighted kappa needs at least one graded answer.")
    for name, grades in (("reference", reference), ("predicted", predicted)):
        if grades.min() < 0 or grades.max() >= num_grades:
            raise ValueError(f"A {name} grade is outside 0..{num_grades - 1}: map non-grade answers first.")
    observed = np.zeros((num_grades, num_grades), dtype=np.float64)
    np.add.at(observed, (reference, predicted), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / reference.size
    grades = np.arange(num_grades)
    weights = (grades[:, None] - grades[None, :]) ** 2
    expected_disagreement = float((weights * expected).sum())
    if expected_disagreement == 0.0:
        return math.nan
    return 1.0 - float((weights * observed).sum()) / expected_disagreement


def wilson_interval(successes: int, total: int, z: float = WILSON_Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / total`` (95% with the default `z`).

    ``(p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``: unlike the normal (Wald) interval it stays
    inside [0, 1] and is not empty at 0 or n successes, which matters for the small positive counts of a
    screening set.
    """
    if total <= 0:
        raise ValueError(f"A Wilson interval needs at least one trial, got {total}.")
    if not 0 <= successes <= total:
        raise ValueError(f"successes must be within 0..{total}, got {successes}.")
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / total + z * z / (4 * total * total)) / denominator
    # At 0 and n successes the exact bounds are 0 and 1; the formula leaves a rounding error of ~1e-17 there.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == total else min(1.0, centre + half_width)
    return low, high


def screening_counts(reference_grades: np.ndarray, predicted_grades: np.ndarray, from_grade: int) -> dict[str, int]:
    """True/false positives/negatives for "grade >= `from_grade`"; a :data:`NON_GRADE` prediction is the wrong
    call (false negative on a positive eye, false positive on a negative one)."""
    reference_positive = np.asarray(reference_grades) >= from_grade
    predicted = np.asarray(predicted_grades)
    predicted_positive = np.where(predicted == NON_GRADE, ~reference_positive, predicted >= from_grade)
    return {
        "tp": int(np.sum(reference_positive & predicted_positive)),
        "fn": int(np.sum(reference_positive & ~predicted_positive)),
        "tn": int(np.sum(~reference_positive & ~predicted_positive)),
        "fp": int(np.sum(~reference_positive & predicted_positive)),
    }


def grading_metrics(
    references: Sequence[str],
    predictions: Sequence[str],
    labels: Sequence[str] = DEFAULT_DIAGNOSIS_LABELS,
    prefix: str = "diagnosis_",
) -> dict[str, float | int]:
    """Kappa, screening sensitivity / specificity with 95% Wilson intervals, and the non-grade answer count.

    Args:
        references: Reference diagnosis answers.
        predictions: Predicted diagnosis answers, one per reference.
        labels: The grades, lowest first. With the five ICDR grades (the default) every metric is reported; with
            another number of labels only kappa and the non-grade count (referable / any DR are ICDR notions).
        prefix: Put before every key.

    Returns:
        ``{prefix}qwk``; ``{prefix}referable_sensitivity`` and ``..._specificity`` each with ``_ci_low`` /
        ``_ci_high`` (95% Wilson score interval), the same for ``any_dr``; ``{prefix}non_grade_answers`` (int).
        Rows whose reference is not a grade are left out; keys of undefined values are left out (module
        docstring); empty without a graded row.
    """
    if len(references) != len(predictions):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if len(labels) < 2:
        raise ValueError(f"Grading needs at least two grades, got {list(labels)}.")
    reference_grades = answer_grades(references, labels)
    predicted_grades = answer_grades(predictions, labels)
    graded = reference_grades != NON_GRADE
    reference_grades, predicted_grades = reference_grades[graded], predicted_grades[graded]
    if reference_grades.size == 0:
        return {}
    non_grade = predicted_grades == NON_GRADE
    metrics: dict[str, float | int] = {}
    kappa = quadratic_weighted_kappa(
        reference_grades,
        np.where(non_grade, farthest_grade(reference_grades, len(labels)), predicted_grades),
        len(labels),
    )
    if not math.isnan(kappa):
        metrics[f"{prefix}qwk"] = kappa
    if len(labels) == ICDR_GRADES:
        for task, from_grade in SCREENING_TASKS:
            counts = screening_counts(reference_grades, predicted_grades, from_grade)
            for measure, hits, misses in (
                ("sensitivity", counts["tp"], counts["fn"]),
                ("specificity", counts["tn"], counts["fp"]),
            ):
                total = hits + misses
                if total == 0:
                    continue
                low, high = wilson_interval(hits, total)
                metrics[f"{prefix}{task}_{measure}"] = hits / total
                metrics[f"{prefix}{task}_{measure}_ci_low"] = low
                metrics[f"{prefix}{task}_{measure}_ci_high"] = high
    metrics[f"{prefix}non_grade_answers"] = int(non_grade.sum())
    return metrics


def format_grading(metrics: Mapping[str, float | int], prefix: str = "diagnosis_") -> list[str]:
    """Human-readable lines of `grading_metrics`'s output (for command lines): kappa, then one line per
    screening task, then the non-grade count; "n/a" where a value is undefined. Empty without grading keys."""
    if f"{prefix}non_grade_answers" not in metrics:
        return []

    def value(key: str) -> str:
        if f"{prefix}{key}" not in metrics:
            return "n/a"
        low, high = metrics.get(f"{prefix}{key}_ci_low"), metrics.get(f"{prefix}{key}_ci_high")
        interval = f" (95% CI {low:.3f}-{high:.3f})" if low is not None and high is not None else ""
        return f"{metrics[f'{prefix}{key}']:.3f}{interval}"

    lines = [f"quadratic weighted kappa {value('qwk')}"]
    for task, name in (("referable", "referable DR (moderate or worse)"), ("any_dr", "any DR (mild or worse)")):
        if f"{prefix}{task}_sensitivity" in metrics or f"{prefix}{task}_specificity" in metrics:
            lines.append(
                f"{name}: sensitivity {value(f'{task}_sensitivity')}, specificity {value(f'{task}_specificity')}"
            )
    lines.append(f"answers that are not a grade: {metrics[f'{prefix}non_grade_answers']}")
    return lines
