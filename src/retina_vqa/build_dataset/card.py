"""The dataset card (``README.md`` in the output) of a dataset built from grading labels.

This module owns `write_card`: where the data came from (source, label files, image folders, the command),
how to load it, its columns, how the questions follow from the labels, how the splits were made, counts of
images, patients and rows per split, images per grade, rows per question type and per answer, how the
images were stored, and what was left out and why (ungradable images, and each kind of bad input dropped
with ``--skip_invalid``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..questions import (
    DIAGNOSIS_ANSWERS,
    LABEL_QUESTION_TYPES,
    MACULAR_OEDEMA_ANSWERS,
    MODALITY_ANSWER,
    REFERABLE_DR_MIN_GRADE,
)
from ..synthetic.export import markdown_table, short_text
from .records import PROBLEM_KINDS
from .sources import SOURCES
from .writer import SplitStats, WriteSettings

__all__ = ["write_card"]

_ANSWER_RULES = {
    "modality": f"`{MODALITY_ANSWER}`",
    "abnormality": "`yes` for grade 1-4, `no` for grade 0",
    "diagnosis": "the grade: " + ", ".join(f"{g} `{a}`" for g, a in enumerate(DIAGNOSIS_ANSWERS)),
    "blindness": "the synthetic set's answer for the grade (`no` for grade 0)",
    "cause": "the synthetic set's answer for the grade (`none` for grade 0)",
    "laterality": "`left eye` / `right eye`, as the source names the eye",
    "referable_dr": f"`yes` for grade {REFERABLE_DR_MIN_GRADE}-4 (moderate or worse), `no` otherwise",
    "macular_oedema": (
        f"`{MACULAR_OEDEMA_ANSWERS['none']}` (no hard exudates), `{MACULAR_OEDEMA_ANSWERS['low']}` (hard exudates "
        f"farther than one disc diameter from the macula centre), `{MACULAR_OEDEMA_ANSWERS['high']}` (within one "
        f"disc diameter); a binary label (Messidor-2) answers `{MACULAR_OEDEMA_ANSWERS['high']}` or "
        f"`{MACULAR_OEDEMA_ANSWERS['not_high']}`"
    ),
    "quality": "`no` for images the source grades ungradable, `yes` otherwise",
}
_UNGRADABLE_REASON = "the source grades the image ungradable (--keep_ungradable keeps them, with the quality question)"
_REASONS = {
    "ungradable": _UNGRADABLE_REASON,
    "no_questions": "none of the asked question types (--question_types) applies to the image's labels",
}


# How the rows are stored (`--layout`), for the card's column section.
_LAYOUT = {
    True: "One row per image, each image stored once; `question`, `answer`, `question_type` and `answer_type` are "
    "lists with one item per question asked of the image.",
    False: "One row per (image, question type), each with its own copy of the image (`--layout question_rows`).",
}


def write_card(
    dataset_dir: Path,
    *,
    source: str,
    label_files: Sequence[Path],
    images_dirs: Sequence[Path],
    command: str,
    stats: Mapping[str, SplitStats],
    split_notes: Sequence[str],
    dropped: Mapping[str, int],
    settings: WriteSettings,
    output_dir: Path,
) -> Path:
    """Write ``dataset_dir / "README.md"``; ``dropped`` maps "ungradable" and problem kinds to image counts."""
    splits = list(stats)
    columns = ["image", "question", "answer", "image_id", "question_type", "answer_type", "grade"]
    columns += ["laterality"] * settings.with_laterality + ["patient_id"] * settings.with_patient
    size_rows = [
        [s, stats[s].images, len(stats[s].patients) if settings.with_patient else "-", stats[s].rows] for s in splits
    ]
    grade_keys = [g for g in (0, 1, 2, 3, 4, None) if any(stats[s].grades.get(g) for s in splits)]
    grade_rows = [
        ["ungradable" if g is None else f"{g} ({DIAGNOSIS_ANSWERS[g]})", *(stats[s].grades.get(g, 0) for s in splits)]
        for g in grade_keys
    ]
    type_rows = [
        [t, *(stats[s].question_types.get(t, 0) for s in splits)]
        for t in LABEL_QUESTION_TYPES
        if any(stats[s].question_types.get(t) for s in splits)
    ]
    pairs = sorted(
        {pair for s in splits for pair in stats[s].answers},
        key=lambda p: (LABEL_QUESTION_TYPES.index(p[0]), p[1]),
    )
    answer_rows = [[t, short_text(a), *(stats[s].answers.get((t, a), 0) for s in splits)] for t, a in pairs]
    dropped_rows = [
        [kind, count, _REASONS[kind] if kind in _REASONS else PROBLEM_KINDS[kind][0]]
        for kind, count in dropped.items()
        if count
    ]
    dropped_text = (
        markdown_table(["reason", "images", "why"], dropped_rows)
        if dropped_rows
        else "Nothing: every labelled image is in."
    )
    if settings.keep_original:
        storage = "every image file as it was (`--keep_original`)"
    else:
        storage = (
            f"images with a side above {settings.max_image_side} px decoded (JPEGs at a reduced DCT scale), resized "
            f"to a longer side of {settings.max_image_side} px (bicubic) and stored as JPEG quality "
            f"{settings.jpeg_quality}; JPEG and PNG files within {settings.max_image_side} px stored as they were"
        )
    questions = "\n".join(f"- `{t}`: {_ANSWER_RULES[t]}" for t in settings.question_types)
    card = f"""# {SOURCES[source].title} as RetinaVQA

Question/answer rows about colour fundus photographs, built from grading labels by
`python -m retina_vqa.build_dataset`, in the format `run_vqa.py --dataset_dir` trains on.

- Source: `--source {source}`
- Label files: {", ".join(f"`{p}`" for p in label_files)}
- Image folders: {", ".join(f"`{p}`" for p in images_dirs)}

Produced by:

```
{command}
```

Load with `retina_vqa.data.loading.load_dataset_dir("{output_dir}")` (one row per question, as run_vqa.py reads
it) or `datasets.load_from_disk("{output_dir}")` (the rows as stored). The images and labels keep the licence of
their source.

## Columns

{", ".join(f"`{c}`" for c in columns)}.

{_LAYOUT[settings.image_rows]} `grade` is the ICDR grade 0-4 (-1: ungradable).

## Questions

Only what the labels say, with the synthetic set's wording and answers where it has the question type
({"a paraphrase drawn per image and seed" if settings.paraphrase else "canonical wording"}):

{questions}

No lesion questions: grading labels name no lesions.

## Splits

{chr(10).join(f"- {note}" for note in split_notes)}

{markdown_table(["split", "images", "patients", "rows"], size_rows)}

## Images per grade

{markdown_table(["grade", *splits], grade_rows)}

## Rows per question type

{markdown_table(["question type", *splits], type_rows)}

## Rows per answer

{markdown_table(["question type", "answer", *splits], answer_rows)}

## Images

Stored as {storage}.

## Left out

{dropped_text}
"""
    path = dataset_dir / "README.md"
    path.write_text(card, encoding="utf-8")
    return path
