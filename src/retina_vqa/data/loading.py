"""Loading question-answer data from disk, the hub or files, and checking its splits and columns.

The one loader of the project: run_vqa.py, `python -m retina_vqa.predict`, the baselines and the
visualisation commands all read data through `load_raw_datasets` / `load_dataset_dir`. Splits in image rows
(each image stored once, `data.layout`) come out as question rows that reference their images, so every reader
sees one row per question whichever layout is on disk.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk

from .layout import expand_questions, is_image_rows

if TYPE_CHECKING:  # the entry point's flags, read here by attribute; data/ does not import them
    from ..arguments import DataTrainingArguments, ModelArguments


logger = logging.getLogger(__name__)


def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments | None = None) -> DatasetDict:
    """Read the splits from whichever source the arguments name; image rows come out as question rows."""
    columns = {
        "image_column": data_args.image_column,
        "question_column": data_args.question_column,
        "answer_column": data_args.answer_column,
    }
    if data_args.dataset_dir is not None:
        return load_dataset_dir(data_args.dataset_dir, **columns)
    if data_args.dataset_name is not None:
        kwargs = {}
        if model_args is not None:
            kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.token}
        loaded = load_dataset(data_args.dataset_name, data_args.dataset_config_name, **kwargs)
        return as_question_rows(loaded, **columns)
    splits = {
        data_args.train_split: data_args.train_file,
        data_args.validation_split: data_args.validation_file,
        data_args.test_split: data_args.test_file,
    }
    return DatasetDict(
        {split: _load_file(path, data_args.image_column) for split, path in splits.items() if path is not None}
    )


def as_question_rows(
    dataset: DatasetDict, image_column: str = "image", question_column: str = "question", answer_column: str = "answer"
) -> DatasetDict:
    """Every split in image rows expanded to question rows (`layout.expand_questions`); others unchanged."""
    if not isinstance(dataset, DatasetDict):
        return dataset
    return DatasetDict(
        {
            split: expand_questions(rows, image_column, question_column, answer_column)
            if image_column in rows.column_names and is_image_rows(rows, question_column)
            else rows
            for split, rows in dataset.items()
        }
    )


def load_dataset_dir(
    dataset_dir: str,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    expand: bool = True,
) -> DatasetDict:
    """A `DatasetDict` saved with ``save_to_disk`` (question rows, or image rows expanded to question rows unless
    ``expand`` is False), or an imagefolder export (one folder per split, each with images and
    ``metadata.jsonl``, as ``python -m retina_vqa.synthetic --format imagefolder`` writes); errors name the
    folder and the fix."""
    path = Path(dataset_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"--dataset_dir {dataset_dir} does not exist. Make synthetic data with "
            f"`python -m retina_vqa.synthetic --output_dir {dataset_dir}` or point to your RetinaVQA folder."
        )
    split_folders = sorted(p for p in path.iterdir() if (p / "metadata.jsonl").is_file()) if path.is_dir() else []
    if not (path / "dataset_dict.json").exists() and split_folders:
        return DatasetDict({folder.name: _load_file(str(folder), "image") for folder in split_folders})
    try:
        loaded = load_from_disk(str(path))
    except FileNotFoundError as error:
        raise ValueError(
            f"--dataset_dir {dataset_dir} is not a dataset saved with DatasetDict.save_to_disk (expected "
            f"dataset_dict.json and one folder per split). For image files with metadata.jsonl use "
            f"--train_file/--validation_file/--test_file. ({error})"
        ) from error
    if isinstance(loaded, Dataset):
        raise ValueError(
            f"--dataset_dir {dataset_dir} holds a single Dataset, not a DatasetDict with train/validation/"
            "test splits. Save it with DatasetDict({'train': ..., 'validation': ..., 'test': ...})"
            ".save_to_disk."
        )
    return as_question_rows(loaded, image_column, question_column, answer_column) if expand else loaded


def _load_file(path: str, image_column: str) -> Dataset:
    """An imagefolder folder (images + metadata.jsonl) or a JSON lines file with image paths."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Data file or folder {path} does not exist.")
    if os.path.isdir(path):
        # Explicit data_files: with data_dir, datasets names the split after the folder (train/, test/)
        # and ignores the folder's own metadata.jsonl.
        return load_dataset("imagefolder", data_files={"train": os.path.join(path, "**")}, split="train")
    if not path.endswith((".json", ".jsonl")):
        raise ValueError(f"{path}: expected a folder (imagefolder) or a .json/.jsonl file.")
    dataset = load_dataset("json", data_files=path, split="train")
    if image_column in dataset.column_names and dataset.features[image_column].dtype == "string":
        # Relative image paths are relative to the JSON file, so the data folder can be moved.
        base = os.path.dirname(os.path.abspath(path))
        dataset = dataset.map(
            lambda row: {image_column: os.path.join(base, row[image_column])}, desc="Resolving image paths"
        )
        dataset = dataset.cast_column(image_column, Image())
    return dataset


def check_columns(dataset: Dataset, split: str, columns: dict[str, str]) -> None:
    """Raise naming the flag, the missing column, the columns that exist and the closest one."""
    existing = dataset.column_names
    for flag, column in columns.items():
        if column in existing:
            continue
        close = difflib.get_close_matches(column, existing, n=1)
        hint = f" Did you mean --{flag} {close[0]}?" if close else ""
        raise ValueError(f"--{flag} {column!r} is not a column of the {split!r} split; it has {existing}.{hint}")


def check_split(raw_datasets: DatasetDict, split: str, flag: str, file_flag: str) -> Dataset:
    if split not in raw_datasets:
        raise ValueError(
            f"{flag} needs a {split!r} split, but the data has {list(raw_datasets)}. Add one "
            f"({file_flag}), or name an existing split with {file_flag.replace('_file', '_split')}."
        )
    return raw_datasets[split]


def select_task_splits(raw_datasets: DatasetDict, data_args: DataTrainingArguments, tasks: dict[str, bool]) -> dict:
    """The rows each enabled task (``do_train``, ``do_eval``, ``do_predict``) works on, checked: its split exists
    and has the question, answer and image columns; ``--max_*_samples`` keeps the first rows.

    Returns ``{task: (split name, Dataset)}`` for the enabled tasks.
    """
    columns = {
        "image_column": data_args.image_column,
        "question_column": data_args.question_column,
        "answer_column": data_args.answer_column,
    }
    wanted = {
        "do_train": (data_args.train_split, "--train_file", data_args.max_train_samples),
        "do_eval": (data_args.validation_split, "--validation_file", data_args.max_eval_samples),
        "do_predict": (data_args.test_split, "--test_file", data_args.max_predict_samples),
    }
    selected = {}
    for task, (split, file_flag, max_samples) in wanted.items():
        if not tasks.get(task):
            continue
        dataset = check_split(raw_datasets, split, f"--{task}", file_flag)
        check_columns(dataset, split, columns)
        if max_samples is not None:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        selected[task] = (split, dataset)
    return selected


def rows_to_validate(selected: dict) -> dict[str, Dataset]:
    """One dataset per split name to validate: where two tasks read the same split (``--do_eval`` and
    ``--do_predict`` on "test" with different ``--max_*_samples``), the longer selection, which holds the
    other's rows (both are the split's first rows)."""
    longest: dict[str, Dataset] = {}
    for split, dataset in selected.values():
        if split not in longest or len(dataset) > len(longest[split]):
            longest[split] = dataset
    return longest
