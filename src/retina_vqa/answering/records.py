"""What answering writes: answers put back in the split's row order, ranked rows' chosen candidates with every
candidate's probability, and one JSON line per question next to its reference (``predictions.jsonl``), for
run_vqa.py and ``python -m retina_vqa.predict`` alike."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import normalize_answer
from ..metrics.calibration import referable_probability
from ..metrics.gradability import gradability_metrics, gradable_rows, predicted_ungradable_rate
from ..metrics.grading import REFERABLE_FROM_GRADE, answer_grades, grading_metrics
from ..metrics.screening import apply_operating_points, grade_probabilities, macro_ovr_auroc, patient_screening_metrics
from ..questions import DIAGNOSIS_ANSWERS


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


# The columns of the cross-dataset table: (heading, summary key).
CROSS_DATASET_COLUMNS = (
    ("questions", "questions"),
    ("exact match", "exact_match"),
    ("QWK", "diagnosis_qwk"),
    ("macro AUROC", "diagnosis_macro_auroc"),
    ("referable sens. (eye)", "diagnosis_referable_sensitivity"),
    ("referable spec. (eye)", "diagnosis_referable_specificity"),
    ("referable sens. (patient)", "diagnosis_patient_referable_sensitivity"),
    ("referable spec. (patient)", "diagnosis_patient_referable_specificity"),
    ("ungradable (reference)", "ungradable_rate"),
    ("ungradable (model)", "predicted_ungradable_rate"),
)


def _record_images(records: Sequence[dict[str, Any]], image_keys: Sequence[Any] | None) -> list[Any] | None:
    """Which image each record is about: `image_keys` (row by row) when given, else the records' ``image_id``;
    None when neither says."""
    if image_keys is not None:
        if len(image_keys) != len(records):
            raise ValueError(f"{len(image_keys)} image keys for {len(records)} answered rows.")
        return list(image_keys)
    ids = [r.get("image_id") for r in records]
    return None if any(i is None for i in ids) else ids


def graded_diagnosis_rows(records: Sequence[dict[str, Any]], image_keys: Sequence[Any] | None = None) -> list[int]:
    """The diagnosis rows with a reference that the grading metrics score: those of gradable images only (an image
    whose reference quality answer is "no" is left out, `metrics.gradability`), every one without a quality row or
    without a way to tell the images apart (`image_keys`, else the records' ``image_id``)."""
    images = _record_images(records, image_keys)
    keep = None
    if images is not None:
        types = [r.get("question_type") for r in records]
        keep = gradable_rows(images, types, [str(r.get("reference", "")) for r in records])
    return [
        i
        for i, r in enumerate(records)
        if r.get("question_type") == "diagnosis" and "reference" in r and (keep is None or keep[i])
    ]


def gradability_summary(
    records: Sequence[dict[str, Any]], image_keys: Sequence[Any] | None = None
) -> dict[str, float | int]:
    """The ungradable counts and rates of answered rows (`metrics.gradability.gradability_metrics`); without
    references only ``predicted_ungradable_rate``. Empty without a quality question or image identities."""
    images = _record_images(records, image_keys)
    if images is None:
        return {}
    types = [r.get("question_type") for r in records]
    predictions = [str(r["prediction"]) for r in records]
    if all("reference" in r for r in records):
        return gradability_metrics(images, types, [str(r["reference"]) for r in records], predictions)
    rate = predicted_ungradable_rate(images, types, predictions)
    return {} if rate is None else {"predicted_ungradable_rate": rate}


def dataset_summary(
    name: str,
    records: Sequence[dict[str, Any]],
    patients: Sequence[Any] | None = None,
    points: Sequence[Any] | None = None,
    image_keys: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """One dataset's screening numbers from its answered rows (`prediction_records`): exact match; the ungradable
    rates (`gradability_summary`); for the diagnosis rows of gradable images (`graded_diagnosis_rows`; `image_keys`
    row by row, else the records' ``image_id``) QWK and referable DR per eye (`metrics.grading`), macro one-vs-rest
    AUROC and the saved operating points (ranked answers: their candidate probabilities), referable DR per patient
    (with `patients`, row by row)."""
    summary: dict[str, Any] = {"dataset": name, "questions": len(records)}
    scored = [r for r in records if "correct" in r]
    if scored:
        summary["exact_match"] = sum(r["correct"] for r in scored) / len(scored)
    summary.update(gradability_summary(records, image_keys))
    rows = graded_diagnosis_rows(records, image_keys)
    if not rows:
        return summary
    references = [records[i]["reference"] for i in rows]
    predictions = [records[i]["prediction"] for i in rows]
    grading = grading_metrics(references, predictions, prefix="")
    summary.update({f"diagnosis_{k}": v for k, v in grading.items() if isinstance(v, (int, float))})
    if patients is not None:
        patient = patient_screening_metrics(references, predictions, [patients[i] for i in rows], DIAGNOSIS_ANSWERS)
        summary.update({f"diagnosis_{k}": v for k, v in patient.items()})
    graded = [i for i in rows if records[i].get("answer_scores") and answer_grades([records[i]["reference"]])[0] >= 0]
    if graded:
        scores = [records[i]["answer_scores"] for i in graded]
        probabilities = np.stack([grade_probabilities(list(s), list(s.values())) for s in scores])
        grades = answer_grades([records[i]["reference"] for i in graded])
        macro, _ = macro_ovr_auroc(probabilities, grades)
        if not np.isnan(macro):
            summary["diagnosis_macro_auroc"] = macro
        if points:
            p_referable = [referable_probability(list(s), list(s.values())) for s in scores]
            summary.update(apply_operating_points(points, p_referable, grades >= REFERABLE_FROM_GRADE))
    return summary


def write_cross_dataset_table(summaries: Sequence[dict[str, Any]], stem: str) -> str:
    """Write `summaries` (one per dataset) as ``<stem>.json`` and a Markdown table ``<stem>.md``; returns the table.
    The saved operating points' columns are added when any dataset has them."""
    columns = list(CROSS_DATASET_COLUMNS)
    point_keys = sorted(
        {
            k
            for s in summaries
            for k in s
            if k.startswith("operating_point_") and k.endswith(("_sensitivity", "_specificity"))
        }
    )
    columns += [(key.removeprefix("operating_point_").replace("_", " "), key) for key in point_keys]
    lines = ["| dataset | " + " | ".join(h for h, _ in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for summary in summaries:
        cells = []
        for _, key in columns:
            value = summary.get(key)
            cells.append("-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append(f"| {summary['dataset']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text(table, encoding="utf-8")
    Path(f"{stem}.json").write_text(json.dumps(list(summaries), indent=1) + "\n", encoding="utf-8")
    return table
