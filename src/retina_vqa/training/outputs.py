"""The question-prior baseline's scores a run reports next to the model's, under the model's keys. (The answers a
run writes, ``predictions.jsonl``, are put together in `answering.records`.)"""

from __future__ import annotations

from typing import Any

from ..metrics import GRADING_KEYS, PRIOR_REPORTED_KEYS, score_prior

# The prior's scores reported next to the model's: the headline numbers, exact match per question type and the
# diagnosis grading metrics (kappa, screening sensitivity / specificity with intervals, non-grade answers).
PRIOR_KEYS = (
    "exact_match",
    "closed_accuracy",
    "token_f1",
    "diagnosis_accuracy",
    *(f"diagnosis_{key}" for key in GRADING_KEYS),
    *PRIOR_REPORTED_KEYS,  # multi-disease: the most common report scored by its findings, set and numeric answers
)


def prior_metrics(train_dataset: Any, eval_dataset: Any, prefix: str, **columns: str) -> dict[str, float]:
    """The question-prior baseline fit on `train_dataset`, scored on `eval_dataset` with the model's metrics, as
    ``{prefix}_prior_<metric>``; empty without training data. `columns` go to `metrics.score_prior`."""
    if train_dataset is None:
        return {}
    scores = score_prior(train_dataset, eval_dataset, **columns)
    return {f"{prefix}_prior_{k}": v for k, v in scores.items() if k in PRIOR_KEYS or k.startswith("exact_match/")}
