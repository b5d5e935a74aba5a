"""Probabilities of ranked answers and how far to trust them: softmax with temperature, expected calibration error,
reliability bins, the referable-DR ROC AUC of the diagnosis question, and temperature scaling.

A ranked answer (`retina_vqa.models.ranking`) comes with a log-likelihood per candidate answer; its probabilities
are ``softmax(score / T)`` over the candidates (candidates left out by the first-token pre-selection have score
``-inf`` and probability 0). This module turns those scores into the numbers a screening user reads:

* `expected_calibration_error`: 10 equal-width bins on the top probability, ``sum_b n_b / N * |accuracy_b -
  confidence_b|``; `reliability_bins` are the same bins for the picture (`plots.plot_calibration`);
* `roc_auc`: the rank (Mann-Whitney) form of the ROC AUC, ties counted half, as ``sklearn.metrics.roc_auc_score``;
  for the diagnosis question, of P(referable) = the summed probability of "moderate dr", "severe dr" and
  "proliferative dr" (moderate NPDR or worse, the usual referral threshold);
* `fit_temperature`: the T that minimises the negative log-likelihood of the reference answers (temperature
  scaling, Guo et al. 2017). The NLL is convex in 1/T, so a golden-section search over 1/T finds its minimum;
* `calibration_metrics` / `RankedAnswerMetrics`: all of it as the flat dict the Trainer logs, next to the other
  metrics.

Numpy only (no torch), so `plots` can use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..questions import DIAGNOSIS_ANSWERS
from .gradability import gradable_rows
from .normalize import normalize_answer

__all__ = [
    "NUM_BINS",
    "REFERABLE_ANSWERS",
    "RankedAnswerMetrics",
    "ScoredAnswer",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperatures",
    "probabilities",
    "referable_probability",
    "reliability_bins",
    "roc_auc",
]

NUM_BINS = 10
# Moderate non-proliferative DR or worse: the grades a screening programme refers to an eye specialist.
REFERABLE_ANSWERS = DIAGNOSIS_ANSWERS[2:]
# Temperatures searched (1/T in [1/20, 1/0.05]): wide enough for any model, narrow enough to stay finite.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# A candidate set with fewer validation rows than this gets the temperature fitted on all rows together.
MIN_ROWS_PER_TEMPERATURE = 20


def probabilities(scores: Sequence[float] | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(scores / temperature)``; ``-inf`` scores (candidates never scored) get probability 0."""
    if not temperature > 0:
        raise ValueError(f"The temperature must be positive, got {temperature}.")
    values = np.asarray(scores, dtype=np.float64) / temperature
    if values.size == 0 or not np.isfinite(values).any():
        raise ValueError("Probabilities need at least one finite candidate score.")
    values = values - values[np.isfinite(values)].max()
    weights = np.exp(values)  # exp(-inf) = 0
    return weights / weights.sum()


def expected_calibration_error(
    confidences: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, num_bins: int = NUM_BINS
) -> float:
    """ECE over `num_bins` equal-width bins of the confidence (the top probability); NaN without rows."""
    bins = reliability_bins(confidences, correct, num_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def reliability_bins(
    confidences: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, num_bins: int = NUM_BINS
) -> list[dict[str, float]]:
    """Per bin ``(lower, upper]`` (the first also holds 0): ``lower``, ``upper``, ``count``, mean ``confidence``
    and ``accuracy`` (both NaN in an empty bin)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidences.shape != correct.shape:
        raise ValueError(f"{confidences.shape[0]} confidences for {correct.shape[0]} correctness values.")
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}.")
    # Bin b holds (b/num_bins, (b+1)/num_bins]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.ceil(confidences * num_bins).astype(int) - 1, 0, num_bins - 1)
    bins = []
    for b in range(num_bins):
        members = index == b
        count = int(members.sum())
        bins.append(
            {
                "lower": b / num_bins,
                "upper": (b + 1) / num_bins,
                "count": count,
                "confidence": float(confidences[members].mean()) if count else float("nan"),
                "accuracy": float(correct[members].mean()) if count else float("nan"),
            }
        )
    return bins


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """ROC AUC as the probability that a positive scores above a negative (ties count half): the normalised
    Mann-Whitney U from average ranks. NaN when either class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.shape[0]} scores for {labels.shape[0]} labels.")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    start = 0
    while start < len(scores):  # tied scores share their average rank
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def referable_probability(
    answers: Sequence[str], probs: Sequence[float] | np.ndarray, referable: Sequence[str] = REFERABLE_ANSWERS
) -> float:
    """P(referable DR): the summed probability of the candidates that are referable grades."""
    wanted = {normalize_answer(a) for a in referable}
    return float(sum(p for a, p in zip(answers, probs, strict=True) if normalize_answer(a) in wanted))


# ---------------------------------------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------------------------------------


def _mean_nll(scores: np.ndarray, target_scores: np.ndarray, inverse_temperature: float) -> float:
    """Mean NLL of the targets under softmax(scores / T); `scores` is -inf-padded (rows x candidates)."""
    scaled = scores * inverse_temperature
    top = scaled.max(axis=1, keepdims=True)
    log_normaliser = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_normaliser - target_scores * inverse_temperature))


def fit_temperature(
    score_rows: Sequence[Sequence[float] | np.ndarray],
    targets: Sequence[int],
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    iterations: int = 80,
) -> float:
    """The temperature minimising the mean negative log-likelihood of ``targets[i]`` (the index of the reference
    among the candidates of row i, or -1 when the reference is not a candidate).

    Rows whose reference is not a candidate, or was never scored (``-inf``), say nothing about the temperature and
    are left out; so are rows with a single finite score. Without any row left: 1.0. The NLL is convex in 1/T,
    so golden-section search over 1/T within `bounds` converges to the minimum.
    """
    rows, kept_targets = [], []
    for scores, target in zip(score_rows, targets, strict=True):
        scores = np.asarray(scores, dtype=np.float64)
        if 0 <= target < len(scores) and np.isfinite(scores[target]) and np.isfinite(scores).sum() > 1:
            rows.append(scores)
            kept_targets.append(int(target))
    if not rows:
        return 1.0
    matrix = np.full((len(rows), max(len(r) for r in rows)), -np.inf)
    for i, scores in enumerate(rows):
        matrix[i, : len(scores)] = scores
    target_scores = np.array([scores[t] for scores, t in zip(rows, kept_targets, strict=True)])

    def nll(inverse_temperature: float) -> float:
        return _mean_nll(matrix, target_scores, inverse_temperature)

    low, high = 1.0 / bounds[1], 1.0 / bounds[0]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(1.0 / ((a + b) / 2.0))


@dataclass(frozen=True)
class ScoredAnswer:
    """One ranked question: its candidate set, the candidates' log-likelihoods, and (when known) the reference.

    ``question_type`` (the dataset's column, when it has one) groups the per-type numbers; without it the
    candidate set's name does. ``gradable`` is False for a grading question of an image whose reference says it
    cannot be graded (`gradability.gradable_rows`): the referable-DR numbers leave it out.
    """

    set_name: str
    answers: tuple[str, ...]
    scores: np.ndarray
    reference: str | None = None
    question_type: str | None = None
    gradable: bool = True

    @property
    def group(self) -> str:
        return self.question_type or self.set_name

    def target(self) -> int:
        """The index of the reference among the candidates (normalised answers), -1 when it is not one."""
        if self.reference is None:
            return -1
        reference = normalize_answer(self.reference)
        for i, answer in enumerate(self.answers):
            if normalize_answer(answer) == reference:
                return i
        return -1


def fit_temperatures(rows: Sequence[ScoredAnswer], min_rows: int = MIN_ROWS_PER_TEMPERATURE) -> dict[str, float]:
    """One temperature per candidate set, fitted on its rows; a set with fewer than `min_rows` usable rows gets
    the temperature fitted on all rows together. Sets of a single candidate need none (their probability is 1)."""
    targets = [row.target() for row in rows]
    overall = fit_temperature([row.scores for row in rows], targets)
    temperatures = {}
    for name in dict.fromkeys(row.set_name for row in rows):
        members = [i for i, row in enumerate(rows) if row.set_name == name]
        if len(rows[members[0]].answers) < 2:
            continue
        usable = [i for i in members if targets[i] >= 0 and np.isfinite(rows[i].scores[targets[i]])]
        if len(usable) < min_rows:
            temperatures[name] = overall
        else:
            temperatures[name] = fit_temperature([rows[i].scores for i in usable], [targets[i] for i in usable])
    return temperatures


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def _scored(rows: Sequence[ScoredAnswer], temperatures: Mapping[str, float] | None) -> list[tuple[float, bool]]:
    """(top probability, top answer is the reference) per row with a reference."""
    result = []
    for row in rows:
        if row.reference is None:
            continue
        temperature = (temperatures or {}).get(row.set_name, 1.0)
        probs = probabilities(row.scores, temperature)
        top = int(np.argmax(probs))
        result.append((float(probs[top]), normalize_answer(row.answers[top]) == normalize_answer(row.reference)))
    return result


def _referable_auc(
    rows: Sequence[ScoredAnswer], temperatures: Mapping[str, float] | None, diagnosis_type: str
) -> float:
    diagnosis = [row for row in rows if row.group == diagnosis_type and row.reference is not None and row.gradable]
    referable = {normalize_answer(a) for a in REFERABLE_ANSWERS}
    scores = [
        referable_probability(row.answers, probabilities(row.scores, (temperatures or {}).get(row.set_name, 1.0)))
        for row in diagnosis
    ]
    labels = [normalize_answer(row.reference) in referable for row in diagnosis]
    return roc_auc(scores, labels)


def calibration_metrics(
    rows: Sequence[ScoredAnswer],
    temperatures: Mapping[str, float] | None = None,
    diagnosis_type: str = "diagnosis",
    num_bins: int = NUM_BINS,
) -> dict[str, float | int]:
    """The numbers of a set of ranked answers, as a flat dict.

    ``ranked_questions`` (rows ranked), ``ranked_accuracy`` and ``ranked_reference_not_in_list`` (rows whose
    reference is no candidate: counted wrong); ``ece`` over all ranked rows and ``ece/<type>`` per question type
    (probabilities at temperature 1); ``diagnosis_referable_auc`` (ROC AUC of P(referable) for the
    `diagnosis_type` rows of gradable images, when both classes occur). With `temperatures` (per candidate set),
    the same with temperature scaling as ``ece_calibrated``, ``ece_calibrated/<type>``,
    ``diagnosis_referable_auc_calibrated``, and ``temperature/<set>``. Keys of empty groups are left out.
    """
    metrics: dict[str, float | int] = {"ranked_questions": len(rows)}
    with_reference = [row for row in rows if row.reference is not None]
    if not with_reference:
        return metrics
    metrics["ranked_reference_not_in_list"] = sum(row.target() < 0 for row in with_reference)
    variants = [("", None)]
    if temperatures:
        variants.append(("_calibrated", temperatures))
    for suffix, scaling in variants:
        scored = _scored(with_reference, scaling)
        if not suffix:
            metrics["ranked_accuracy"] = float(np.mean([right for _, right in scored]))
        confidences = [confidence for confidence, _ in scored]
        metrics[f"ece{suffix}"] = expected_calibration_error(confidences, [right for _, right in scored], num_bins)
        for group in dict.fromkeys(row.group for row in with_reference):
            members = [i for i, row in enumerate(with_reference) if row.group == group]
            metrics[f"ece{suffix}/{group}"] = expected_calibration_error(
                [scored[i][0] for i in members], [scored[i][1] for i in members], num_bins
            )
        auc = _referable_auc(with_reference, scaling, diagnosis_type)
        if not math.isnan(auc):
            metrics[f"{diagnosis_type}_referable_auc{suffix}"] = auc
    for name, temperature in (temperatures or {}).items():
        metrics[f"temperature/{name}"] = float(temperature)
    return metrics


class RankedAnswerMetrics:
    """The Trainer's ``compute_metrics`` with the calibration numbers of ranked answers added.

    Wraps the usual callback (`metrics.build_compute_metrics`), which scores the answers' token ids (the
    chosen candidate's, for ranked rows). The evaluation returns ``(token ids, candidate scores)`` as its
    predictions, the scores one row per evaluated row, ``NaN``-padded to a fixed width (the Trainer gathers them
    from every process like logits). ``row_sets[i]`` is the candidate set of evaluated row i (an index into
    ``set_names``/``set_answers``, -1 for generated rows).

    The rows of the last call are kept (`last_rows`), so that temperatures can be fitted on them afterwards;
    `temperatures` (set by then) adds the temperature-scaled numbers to later calls. With `image_keys` (one per
    evaluated row) and a quality question among `question_types`, the grading rows of images whose reference says
    ungradable are marked (``ScoredAnswer.gradable``), for the screening numbers to leave out.
    """

    def __init__(
        self,
        compute_metrics: Callable[[Any], dict[str, float | int]] | None,
        set_names: Sequence[str],
        set_answers: Sequence[Sequence[str]],
        row_sets: Sequence[int],
        references: Sequence[str] | None = None,
        question_types: Sequence[str] | None = None,
        temperatures: Mapping[str, float] | None = None,
        diagnosis_type: str = "diagnosis",
        image_keys: Sequence[Hashable] | None = None,
    ) -> None:
        if len(set_names) != len(set_answers):
            raise ValueError(f"{len(set_names)} candidate set names for {len(set_answers)} candidate sets.")
        self.compute_metrics = compute_metrics
        self.set_names = list(set_names)
        self.set_answers = [tuple(a) for a in set_answers]
        self.row_sets = list(row_sets)
        self.references = None if references is None else list(references)
        self.question_types = None if question_types is None else list(question_types)
        self.temperatures = dict(temperatures or {})
        self.diagnosis_type = diagnosis_type
        self.gradable = None
        if image_keys is not None and self.question_types is not None and self.references is not None:
            self.gradable = gradable_rows(image_keys, self.question_types, self.references)
        self.last_rows: list[ScoredAnswer] = []

    def rows(self, scores: np.ndarray | None) -> list[ScoredAnswer]:
        """The ranked rows of one evaluation, from its candidate-score matrix."""
        ranked = [i for i, s in enumerate(self.row_sets) if s >= 0]
        if not ranked:
            return []
        if scores is None or len(scores) != len(self.row_sets):
            got = "none" if scores is None else len(scores)
            raise ValueError(
                f"{len(ranked)} rows are ranked but the evaluation returned candidate scores for {got} of "
                f"{len(self.row_sets)} rows: pass the dataset that was evaluated."
            )
        rows = []
        for i in ranked:
            answers = self.set_answers[self.row_sets[i]]
            rows.append(
                ScoredAnswer(
                    set_name=self.set_names[self.row_sets[i]],
                    answers=answers,
                    scores=np.asarray(scores[i][: len(answers)], dtype=np.float64),
                    reference=None if self.references is None else self.references[i],
                    question_type=None if self.question_types is None else self.question_types[i],
                    gradable=True if self.gradable is None else self.gradable[i],
                )
            )
        return rows

    def __call__(self, eval_pred: Any) -> dict[str, float | int]:
        metrics = dict(self.compute_metrics(eval_pred)) if self.compute_metrics is not None else {}
        predictions = eval_pred.predictions
        scores = predictions[1] if isinstance(predictions, tuple) and len(predictions) > 1 else None
        self.last_rows = self.rows(None if scores is None else np.asarray(scores))
        if self.last_rows:
            metrics.update(calibration_metrics(self.last_rows, self.temperatures, self.diagnosis_type))
        return metrics
