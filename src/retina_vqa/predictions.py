"""Turning generated ids into answers and writing them, one JSON line per question, next to the reference."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import decode_ids, normalize_answer


def decode_answers(tokenizer: Any, ids: Any) -> list[str]:
    """Generated (or label) ids -> answer strings."""
    return decode_ids(tokenizer, ids, tokenizer.pad_token_id)


def prediction_records(
    dataset: Any,
    predictions: Sequence[str],
    question_column: str,
    answer_column: str | None,
    extra_columns: Sequence[str] = ("image_id", "question_type", "answer_type"),
) -> list[dict[str, Any]]:
    """One dict per row: id, question, reference, prediction, correct (normalised exact match), extras."""
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
        records.append(record)
    return records


def write_predictions(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
