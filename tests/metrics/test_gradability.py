"""Tests for retina_vqa.metrics.gradability and the metrics that leave ungradable images out of grading."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from transformers import BertTokenizerFast, EvalPrediction

from retina_vqa.answering.records import dataset_summary, graded_diagnosis_rows, write_cross_dataset_table
from retina_vqa.metrics import build_compute_metrics, compute_vqa_metrics
from retina_vqa.metrics.calibration import RankedAnswerMetrics
from retina_vqa.metrics.gradability import gradability_metrics, gradable_rows, ungradable_images
from retina_vqa.questions import DIAGNOSIS_ANSWERS

# Three images: A gradable and graded right; B ungradable by its reference (the model agrees) with wrong grading
# answers that would wreck kappa; C gradable by its reference but called ungradable by the model.
ROWS = [
    # image, question type, reference, prediction
    ("A", "quality", "yes", "yes"),
    ("A", "diagnosis", "moderate dr", "moderate dr"),
    ("A", "referable_dr", "yes", "yes"),
    ("A", "laterality", "left", "left"),
    ("B", "quality", "no", "no"),
    ("B", "diagnosis", "healthy retina", "proliferative dr"),
    ("B", "referable_dr", "no", "yes"),
    ("B", "laterality", "right", "left"),
    ("C", "quality", "yes", "no"),
    ("C", "diagnosis", "healthy retina", "healthy retina"),
    ("C", "referable_dr", "no", "no"),
]
KEYS, TYPES, REFERENCES, PREDICTIONS = (list(column) for column in zip(*ROWS, strict=True))


def test_ungradable_images_and_rows_follow_the_reference_quality_answer():
    assert ungradable_images(KEYS, TYPES, REFERENCES) == {"B"}
    assert ungradable_images(KEYS, TYPES, PREDICTIONS) == {"B", "C"}
    keep = gradable_rows(KEYS, TYPES, REFERENCES)
    # Only B's grading questions go; its quality and laterality questions stay.
    assert [i for i, k in enumerate(keep) if not k] == [5, 6]
    assert gradable_rows(KEYS[1:4], TYPES[1:4], REFERENCES[1:4]) is None  # no quality question: nothing changes
    with pytest.raises(ValueError, match="one of each per row"):
        gradable_rows(KEYS[:3], TYPES, REFERENCES)


def test_gradability_metrics_counts_and_rates():
    assert gradability_metrics(KEYS, TYPES, REFERENCES, PREDICTIONS) == {
        "ungradable_images": 1,
        "ungradable_rows": 2,
        "ungradable_rate": pytest.approx(1 / 3),
        "predicted_ungradable_rate": pytest.approx(2 / 3),
    }
    # "No." and "NO" are the same answer after normalisation.
    shouty = [("NO" if r == "no" else r) for r in REFERENCES]
    assert gradability_metrics(KEYS, TYPES, shouty)["ungradable_images"] == 1


def test_grading_questions_of_ungradable_images_are_left_out_and_counted():
    metrics = compute_vqa_metrics(PREDICTIONS, REFERENCES, question_types=TYPES, image_keys=KEYS)
    assert metrics["ungradable_images"] == 1 and metrics["ungradable_rows"] == 2
    assert metrics["ungradable_rate"] == pytest.approx(1 / 3)
    assert metrics["predicted_ungradable_rate"] == pytest.approx(2 / 3)
    # Grading on A and C only: every grade right, kappa 1, B's healthy -> proliferative gone from the confusion.
    assert metrics["diagnosis_accuracy"] == 1.0 and metrics["diagnosis_qwk"] == pytest.approx(1.0)
    assert metrics["diagnosis_confusion/healthy retina->proliferative dr"] == 0
    assert metrics["diagnosis_referable_sensitivity"] == 1.0 and metrics["diagnosis_referable_specificity"] == 1.0
    assert metrics["exact_match/diagnosis"] == 1.0 and metrics["exact_match/referable_dr"] == 1.0
    # The quality question keeps its own accuracy (C is wrong), other questions keep B's rows.
    assert metrics["exact_match/quality"] == pytest.approx(2 / 3)
    assert metrics["exact_match/laterality"] == pytest.approx(1 / 2)
    # The overall numbers still count every answered row.
    assert metrics["num_examples"] == 11 and metrics["exact_match"] == pytest.approx(7 / 11)

    before = compute_vqa_metrics(PREDICTIONS, REFERENCES, question_types=TYPES)
    assert before["diagnosis_accuracy"] == pytest.approx(2 / 3)
    assert before["diagnosis_confusion/healthy retina->proliferative dr"] == 1
    assert not any(key.startswith(("ungradable", "predicted_ungradable")) for key in before)


def test_a_set_without_a_quality_question_scores_as_before():
    rows = [i for i, t in enumerate(TYPES) if t != "quality"]
    pick = lambda values: [values[i] for i in rows]  # noqa: E731
    with_keys = compute_vqa_metrics(
        pick(PREDICTIONS), pick(REFERENCES), question_types=pick(TYPES), image_keys=pick(KEYS)
    )
    assert with_keys == compute_vqa_metrics(pick(PREDICTIONS), pick(REFERENCES), question_types=pick(TYPES))
    assert with_keys["diagnosis_accuracy"] == pytest.approx(2 / 3)


def test_all_grading_rows_ungradable_leaves_the_grading_keys_out():
    keys, types, refs = ["A", "A"], ["quality", "diagnosis"], ["no", "mild dr"]
    metrics = compute_vqa_metrics(["no", "mild dr"], refs, question_types=types, image_keys=keys)
    assert metrics["ungradable_rate"] == 1.0 and metrics["ungradable_rows"] == 1
    assert "diagnosis_accuracy" not in metrics and "exact_match/diagnosis" not in metrics


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "left", "right", "dr", "retina"]
    words += ["healthy", "mild", "moderate", "severe", "proliferative"]
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(folder))


def test_the_trainer_callback_reads_the_image_key_column(tokenizer):
    ids = tokenizer(PREDICTIONS, padding=True)["input_ids"]
    dataset = datasets.Dataset.from_dict(
        {"answer": REFERENCES, "question_type": TYPES, "image_key": [f"sha1-{k}" for k in KEYS]}
    )
    metrics = build_compute_metrics(tokenizer, dataset)(EvalPrediction(predictions=np.array(ids), label_ids=None))
    assert metrics == compute_vqa_metrics(PREDICTIONS, REFERENCES, question_types=TYPES, image_keys=KEYS)
    assert metrics["ungradable_rows"] == 2
    # Without the column (a set that was never prepared) the grading keeps every row.
    plain = build_compute_metrics(tokenizer, dataset.remove_columns("image_key"))
    assert "ungradable_rate" not in plain(EvalPrediction(predictions=np.array(ids), label_ids=None))


def test_ranked_rows_of_ungradable_images_are_marked_and_left_out_of_the_referable_auc():
    # Ranked diagnosis rows: A referable, C and B not; B's scores call it proliferative, which the AUC would punish.
    grades = list(DIAGNOSIS_ANSWERS)
    row_sets = [0 if t == "diagnosis" else -1 for t in TYPES]
    scores = np.full((len(ROWS), len(grades)), np.nan)
    scores[1] = [0, 0, 5, 0, 0]  # A: moderate
    scores[5] = [0, 0, 5, 5, 5]  # B: surely referable (reference healthy), more so than A
    scores[9] = [5, 0, 0, 0, 0]  # C: healthy
    metrics = RankedAnswerMetrics(None, ["diagnosis"], [grades], row_sets, REFERENCES, TYPES, image_keys=KEYS)
    numbers = metrics(EvalPrediction(predictions=(np.zeros((len(ROWS), 1)), scores), label_ids=None))
    assert [row.gradable for row in metrics.last_rows] == [True, False, True]
    assert numbers["diagnosis_referable_auc"] == 1.0
    unkeyed = RankedAnswerMetrics(None, ["diagnosis"], [grades], row_sets, REFERENCES, TYPES)
    assert unkeyed(EvalPrediction(predictions=(np.zeros((len(ROWS), 1)), scores), label_ids=None))[
        "diagnosis_referable_auc"
    ] == pytest.approx(0.5)  # B ranked above A: its wrong scores count


def _records() -> list[dict]:
    return [
        {"image_id": key, "question_type": kind, "reference": ref, "prediction": pred, "correct": ref == pred}
        for key, kind, ref, pred in ROWS
    ]


def test_dataset_summary_grades_gradable_images_and_the_table_has_the_rates(tmp_path):
    records = _records()
    assert graded_diagnosis_rows(records) == [1, 9]
    # Image keys given row by row win over the records' image ids: one image for all rows, one "no", all ungradable.
    assert graded_diagnosis_rows(records, ["X"] * len(records)) == []
    summary = dataset_summary("synthetic", records)
    assert summary["ungradable_rate"] == pytest.approx(1 / 3)
    assert summary["predicted_ungradable_rate"] == pytest.approx(2 / 3)
    assert summary["diagnosis_qwk"] == pytest.approx(1.0)
    table = write_cross_dataset_table([summary], str(tmp_path / "cross"))
    header, _, row = table.splitlines()
    assert "ungradable (reference)" in header and "ungradable (model)" in header
    assert row.endswith("| 0.333 | 0.667 |")
    # Without image identities or a quality question the summary grades every diagnosis row, as before.
    bare = [{k: v for k, v in r.items() if k != "image_id"} for r in records]
    assert "ungradable_rate" not in dataset_summary("bare", bare)
    assert graded_diagnosis_rows(bare) == [1, 5, 9]
