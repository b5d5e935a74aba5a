"""What a run writes next to its numbers: answers in the split's row order, one JSON line per question next to
its reference (``predictions.jsonl``), and the question-prior baseline's scores under the model's keys."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics import GRADING_KEYS, PRIOR_REPORTED_KEYS, normalize_answer, score_prior


def in_row_order(answers: Sequence[str], order: Sequence[int] | None) -> list[str]:
    """Answers computed in `order` (``order[i]`` is the split row of answer i) put back in row order."""
    if order is None:
        return list(answers)
    if len(order) != len(answers) or sorted(order) != list(range(len(answers))):
        raise ValueError(f"The answering order must name each of the {len(answers)} rows once.")
    rows = [""] * len(answers)
    for position, row in enumerate(order):
        rows[row] = answers[position]
    return rows


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


def ranked_answers(
    answers: Sequence[str], scores: Sequence[Sequence[float]], row_sets: Sequence[int], candidates: Any, plan: Any
) -> tuple[list[str], list[dict[str, float] | None]]:
    """Ranked rows (``row_sets[i] >= 0``: the index of their candidate list in `plan`) get the most likely
    candidate as their answer and every candidate's probability (`candidates`' temperatures applied); generated
    rows keep their answer and get None. All sequences in row order."""
    answer_scores = [
        None if s < 0 else candidates.probabilities(plan.names[s], row[: len(plan.sets[s])])
        for s, row in zip(row_sets, scores, strict=True)
    ]
    chosen = [a if p is None else next(iter(p)) for a, p in zip(answers, answer_scores, strict=True)]
    return chosen, answer_scores


def prediction_records(
    dataset: Any,
    predictions: Sequence[str],
    question_column: str,
    answer_column: str | None,
    extra_columns: Sequence[str] = ("image_id", "question_type", "answer_type"),
    answer_scores: Sequence[dict[str, float] | None] | None = None,
) -> list[dict[str, Any]]:
    """One dict per row: id, question, reference, prediction, correct (normalised exact match), extras; and, for
    ranked answers (`answer_scores`, None for generated rows), ``answer_scores``: each candidate's probability."""
    if answer_scores is not None and len(answer_scores) != len(predictions):
        raise ValueError(f"{len(answer_scores)} answer scores for {len(predictions)} predictions.")
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} rows: every row must be answered once.")
    columns = [question_column] + [c for c in (answer_column, *extra_columns) if c and c in dataset.column_names]
    text = dataset.select_columns(columns).to_dict()
    records = []
    for row, prediction in enumerate(predictions):
        record: dict[str, Any] = {"id": row, "question": text[question_column][row]}
        for column in extra_columns:
            if column in text:
                record[column] = text[column][row]
        record["prediction"] = prediction
        if answer_column in text:
            reference = text[answer_column][row]
            record["reference"] = reference
            record["correct"] = normalize_answer(prediction) == normalize_answer(reference)
        if answer_scores is not None and answer_scores[row] is not None:
            record["answer_scores"] = answer_scores[row]
        records.append(record)
    return records


def write_predictions(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
