"""What answering writes: answers put back in the split's row order, ranked rows' chosen candidates with every
candidate's probability, and one JSON line per question next to its reference (``predictions.jsonl``), for
run_vqa.py and ``python -m retina_vqa.predict`` alike."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics import normalize_answer


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
