"""The question/answer rows of one labelled image, and the dataset's column types.

This module owns which questions an image gets (`question_types_for`), their wording (canonical, or with
``paraphrase`` a wording drawn per image and question type from the catalogue's paraphrases, keyed by the
seed and the image id, so the same image always gets the same wording whatever its split or worker), the
rows themselves (`rows_for`) and the features (`dataset_features`): those of the synthetic set for the
columns they share (``image``, ``question``, ``answer``, ``image_id``, ``question_type``, ``answer_type``,
``grade`` as int32, ``laterality``), plus ``patient_id``. ``laterality`` and ``patient_id`` are columns only
where the source knows them; ``grade`` is -1 for an ungradable image kept with ``--keep_ungradable``.

Questions and answers come from `retina_vqa.questions` (``LABEL_QUESTION_TYPES``, ``graded_answer_for``), the
catalogue the synthetic generator uses.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..data.layout import PER_QUESTION_COLUMNS, image_row_features
from ..questions import LABEL_QUESTION_TYPES, graded_answer_for, graded_question
from ..synthetic.build import row_columns
from .records import LabelRecord

if TYPE_CHECKING:
    import datasets

__all__ = [
    "UNGRADABLE_GRADE",
    "UNGRADABLE_QUESTION_TYPES",
    "dataset_features",
    "image_row",
    "image_row_features",
    "question_types_for",
    "rows_for",
]

UNGRADABLE_GRADE = -1
# The questions an ungradable image can answer: everything else needs a grade.
UNGRADABLE_QUESTION_TYPES = ("modality", "laterality", "quality")


def dataset_features(with_laterality: bool, with_patient: bool) -> datasets.Features:
    """Column types, in the synthetic set's order for the shared columns."""
    import datasets

    columns: dict[str, Any] = row_columns()
    if with_laterality:
        columns["laterality"] = datasets.Value("string")
    if with_patient:
        columns["patient_id"] = datasets.Value("string")
    return datasets.Features(columns)


def question_types_for(record: LabelRecord, dataset_types: Sequence[str]) -> list[str]:
    """The question types of ``dataset_types`` (in catalogue order) that this image's labels answer."""
    types = []
    for question_type in LABEL_QUESTION_TYPES:
        if question_type not in dataset_types:
            continue
        if record.grade is None and question_type not in UNGRADABLE_QUESTION_TYPES:
            continue
        if question_type == "laterality" and record.laterality is None:
            continue
        if question_type == "macular_oedema" and record.macular_oedema is None:
            continue
        types.append(question_type)
    return types


def rows_for(
    record: LabelRecord,
    dataset_types: Sequence[str],
    seed: int,
    paraphrase: bool,
    with_laterality: bool,
    with_patient: bool,
) -> list[dict[str, Any]]:
    """One row per question type, without the image (the writer stores them as one image row, `image_row`)."""
    # String seeds are hashed with SHA-512 by `random`: the same on every machine and Python run.
    rng = random.Random(f"{seed}/{record.image_id}")
    rows = []
    for question_type in question_types_for(record, dataset_types):
        info = graded_question(question_type)
        options = info["paraphrases"]
        # Draw for every type even without paraphrase, so toggling it changes wording only.
        choice = options[rng.randrange(len(options))]
        row = {
            "question": choice if paraphrase else info["question"],
            "answer": graded_answer_for(question_type, record.grade, record.laterality, record.macular_oedema),
            "image_id": record.image_id,
            "question_type": question_type,
            "answer_type": info["answer_type"],
            "grade": UNGRADABLE_GRADE if record.grade is None else record.grade,
        }
        if with_laterality:
            row["laterality"] = record.laterality
        if with_patient:
            row["patient_id"] = record.patient_id
        rows.append(row)
    return rows


def image_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One image's question rows (`rows_for`) as its image row: per-question columns as lists, one value each;
    the other columns describe the image and are the same in every row."""
    return {
        name: [row[name] for row in rows] if name in PER_QUESTION_COLUMNS else value for name, value in rows[0].items()
    }
