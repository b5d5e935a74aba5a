"""The two layouts of a question-answer dataset: question rows and image rows.

* **Question rows** (the RetinaVQA format): one row per question, each with its image. Simple, but every
  question type stores the image again: seven question types, seven copies of every photograph.
* **Image rows** (what the dataset builder and the synthetic generator write): one row per image; the question
  column and the other per-question columns (`PER_QUESTION_COLUMNS`) hold lists, one item per question, and
  every other column describes the image. All question types cost about the disk of one.

Everything that reads data takes both (`data.loading` expands image rows on load): `expand_questions` makes
question rows from image rows without copying an image; each row's image is a reference into the image table
(`data.image_table`) that carries the image's SHA-1, so an image is read, hashed and validated once however
many questions it has. The expansion is a cached ``datasets.map`` over the text: the second run reads it back.
`to_image_rows` goes the other way, for datasets made in question rows (`python -m retina_vqa.data.layout`
converts a saved dataset).

On disk, for N images of B bytes each with Q questions: question rows take about N x Q x B, image rows about
N x B (plus the text, a few hundred bytes per question).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, DatasetDict, Features, Image, List
from datasets import Sequence as SequenceFeature

from . import image_table

__all__ = ["PER_QUESTION_COLUMNS", "expand_questions", "image_row_features", "is_image_rows", "to_image_rows"]

# Columns that hold one value per question (lists in image rows); the question and answer columns a run names
# are added to these.
PER_QUESTION_COLUMNS = ("question", "answer", "question_type", "answer_type")


def is_image_rows(dataset: Dataset, question_column: str = "question") -> bool:
    """Whether ``dataset`` is in image rows: its question column holds a list of strings per row."""
    feature = dataset.features.get(question_column)
    return isinstance(feature, (List, SequenceFeature)) and getattr(feature.feature, "dtype", None) == "string"


def _per_question(dataset: Dataset, extra: Sequence[str]) -> list[str]:
    names = dict.fromkeys([*PER_QUESTION_COLUMNS, *extra])
    return [name for name in names if name in dataset.column_names]


def _explode(
    batch: dict[str, list],
    indices: list[int],
    *,
    token: str,
    image_column: str,
    question_column: str,
    per_question: Sequence[str],
) -> dict[str, list]:
    counts = [len(questions or []) for questions in batch[question_column]]
    for name in per_question:
        for row, values, n in zip(indices, batch[name], counts, strict=True):
            if len(values or []) != n:
                raise ValueError(
                    f"image row {row}: column {name!r} has {len(values or [])} values for {n} questions; in image "
                    f"rows every per-question column ({', '.join(per_question)}) holds one value per question."
                )
    out: dict[str, list] = {}
    for name, values in batch.items():
        if name == image_column:
            out[name] = _references(values, indices, counts, token)
        elif name in per_question:
            out[name] = [value for row_values in values for value in row_values or []]
        else:
            out[name] = [value for value, n in zip(values, counts, strict=True) for _ in range(n)]
    return out


def _references(images: list, indices: list[int], counts: list[int], token: str) -> list:
    """Each question's image: a reference carrying the SHA-1 of the bytes, hashed here once per image."""
    references = []
    for row, value, n in zip(indices, images, counts, strict=True):
        data = value.get("bytes") if isinstance(value, dict) else None
        if data is None:  # a missing image stays missing (validation reports it); a path stays a path
            references += [value] * n
            continue
        ref = image_table.reference(token, row, hashlib.sha1(data).hexdigest())
        references += [{"bytes": None, "path": ref}] * n
    return references


def expand_questions(
    images: Dataset,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    num_proc: int | None = None,
) -> Dataset:
    """Question rows made from image rows, in image order and each image's question order; the image column holds
    references into ``images`` (registered in `data.image_table`), no image bytes. Cached by ``datasets``."""
    if image_column not in images.column_names:
        raise ValueError(f"image rows without the image column {image_column!r}; they have {images.column_names}")
    token = image_table.register(images, image_column)
    per_question = _per_question(images, [question_column, answer_column])
    stored = isinstance(images.features[image_column], Image)  # else paths, kept as they are
    features = Features(
        {
            name: (
                Image(decode=False)
                if name == image_column and stored
                else feature.feature
                if name in per_question
                else feature
            )
            for name, feature in images.features.items()
        }
    )
    if len(images) == 0:  # datasets maps no rows to no columns
        return Dataset.from_dict({name: [] for name in features}, features=features, split=images.split)
    source = images.cast_column(image_column, Image(decode=False)) if stored else images
    return source.map(
        _explode,
        batched=True,
        batch_size=256,
        with_indices=True,
        remove_columns=source.column_names,
        features=features,
        num_proc=num_proc,
        fn_kwargs={
            "token": token,
            "image_column": image_column,
            "question_column": question_column,
            "per_question": per_question,
        },
        desc="Making question rows from image rows",
    )


def image_row_features(features: Features, per_question: Sequence[str] = PER_QUESTION_COLUMNS) -> Features:
    """The column types of image rows for question rows of ``features``: per-question columns become lists."""
    return Features({name: List(f) if name in per_question else f for name, f in features.items()})


def to_image_rows(
    questions: Dataset,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    image_id_column: str | None = "image_id",
) -> Dataset:
    """Image rows from question rows: consecutive rows of one image (same ``image_id_column`` value where the
    column exists, else the same image bytes) become one row; per-question columns become lists. Every other
    column must agree within an image (it describes the image), else ``ValueError`` names it."""
    from .images import image_key

    per_question = _per_question(questions, [question_column, answer_column])
    source = questions.cast_column(image_column, Image(decode=False))
    use_id = image_id_column is not None and image_id_column in source.column_names
    features = image_row_features(questions.features, per_question)

    def groups():
        current: dict[str, Any] | None = None
        key = None
        for row_index, row in enumerate(source):
            row_key = row[image_id_column] if use_id else image_key(row[image_column])
            if current is not None and row_key == key:
                for name in row:
                    if name in per_question:
                        current[name].append(row[name])
                    elif name != image_column and row[name] != current[name]:
                        raise ValueError(
                            f"question row {row_index}: column {name!r} differs between questions of one image "
                            f"({current[name]!r} vs {row[name]!r}); add it to the per-question columns or fix it."
                        )
                continue
            if current is not None:
                yield current
            key = row_key
            current = {name: [value] if name in per_question else value for name, value in row.items()}
        if current is not None:
            yield current

    rows = list(groups())
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=features, split=questions.split)


def _convert(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m retina_vqa.data.layout",
        description="Rewrite a dataset saved in question rows (one image copy per question) as image rows (each "
        "image stored once). Consecutive rows of one image are grouped.",
    )
    parser.add_argument("--dataset_dir", required=True, help="a DatasetDict saved with save_to_disk, question rows")
    parser.add_argument("--output_dir", required=True, help="where the image rows are saved (must not exist)")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--question_column", default="question")
    parser.add_argument("--answer_column", default="answer")
    args = parser.parse_args(argv)
    from pathlib import Path

    from .loading import load_dataset_dir

    if Path(args.output_dir).exists():
        parser.error(f"--output_dir {args.output_dir} exists; choose a new folder")
    dataset = load_dataset_dir(args.dataset_dir, expand=False)
    converted = DatasetDict(
        {
            split: split_rows
            if is_image_rows(split_rows, args.question_column)
            else to_image_rows(split_rows, args.image_column, args.question_column, args.answer_column)
            for split, split_rows in dataset.items()
        }
    )
    converted.save_to_disk(args.output_dir)
    print(f"wrote {args.output_dir}: " + ", ".join(f"{s}: {len(d)} images" for s, d in converted.items()))


if __name__ == "__main__":
    _convert()
