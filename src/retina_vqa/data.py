"""Loading question-answer data from disk, the hub or files, checking it, and tokenising its text.

Text is tokenised once through `datasets.map` (cached on disk); images stay encoded in the dataset and
become pixels per batch in the collator, so the cache never holds float images.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, load_dataset, load_from_disk

from .arguments import DataTrainingArguments, ModelArguments

logger = logging.getLogger(__name__)

IMAGE_KEY = "image_key"


def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments | None = None) -> DatasetDict:
    """Read the splits from whichever source the arguments name."""
    if data_args.dataset_dir is not None:
        return _load_saved(data_args.dataset_dir)
    if data_args.dataset_name is not None:
        kwargs = {}
        if model_args is not None:
            kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.token}
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name, **kwargs)
    splits = {
        data_args.train_split: data_args.train_file,
        data_args.validation_split: data_args.validation_file,
        data_args.test_split: data_args.test_file,
    }
    return DatasetDict(
        {split: _load_file(path, data_args.image_column) for split, path in splits.items() if path is not None}
    )


def _load_saved(dataset_dir: str) -> DatasetDict:
    path = Path(dataset_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"--dataset_dir {dataset_dir} does not exist. Make synthetic data with "
            f"`python -m retina_vqa.synthetic --output_dir {dataset_dir}` or point to your RetinaVQA folder."
        )
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
    return loaded


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


def tokenize_questions_and_answers(
    examples: dict[str, list],
    tokenizer,
    question_column: str,
    answer_column: str | None,
    max_question_length: int,
    max_answer_length: int,
) -> dict[str, list[list[int]]]:
    """Question ids (``[CLS] q [SEP]``) and, when answers are given, decoder ids (``[DEC] a [SEP]``)."""
    questions = [q.strip() for q in examples[question_column]]
    encoded = tokenizer(questions, truncation=True, max_length=max_question_length, return_token_type_ids=False)
    result = {"input_ids": encoded["input_ids"]}
    if answer_column is not None:
        answers = [a.strip() for a in examples[answer_column]]
        answer_ids = tokenizer(answers, truncation=True, max_length=max_answer_length)["input_ids"]
        # BLIP's decoder starts from [DEC] (the bos token), not [CLS]; generate() starts there too.
        result["decoder_input_ids"] = [[tokenizer.bos_token_id] + ids[1:] for ids in answer_ids]
        # For --train_sampling_strategy group_by_length: most answers are 1-3 words, a few are 30; batching
        # by length keeps the short ones from being padded to the long ones.
        result["length"] = [
            len(q) + len(a) for q, a in zip(result["input_ids"], result["decoder_input_ids"], strict=True)
        ]
    return result


def image_keys(examples: dict[str, list], image_column: str) -> dict[str, list[str]]:
    """A short content hash per row's image (its path when the bytes are not stored): rows with the same
    image share a key, which groups questions by image (see sampling.py)."""
    keys = []
    for value in examples[image_column]:
        data = value.get("bytes") if isinstance(value, dict) else None
        if data:
            keys.append(hashlib.sha1(data).hexdigest()[:16])
        else:
            keys.append(str(value.get("path") if isinstance(value, dict) else value))
    return {IMAGE_KEY: keys}


def _prepare_batch(examples: dict[str, list], image_column: str, **tokenize_kwargs) -> dict[str, list]:
    return {**tokenize_questions_and_answers(examples, **tokenize_kwargs), **image_keys(examples, image_column)}


def prepare_split(
    dataset: Dataset,
    tokenizer,
    data_args: DataTrainingArguments,
    with_answers: bool,
    description: str,
) -> Dataset:
    """Tokenise a split and key its images (cached); images stay encoded for the collator to decode."""
    # The collator decodes images itself (one error path for bad files, no PIL objects in workers' queues).
    if isinstance(dataset.features.get(data_args.image_column), Image):
        dataset = dataset.cast_column(data_args.image_column, Image(decode=False))
    # One map: each map writes a new cache file holding every column, image bytes included.
    return dataset.map(
        _prepare_batch,
        batched=True,
        fn_kwargs={
            "tokenizer": tokenizer,
            "question_column": data_args.question_column,
            "answer_column": data_args.answer_column if with_answers else None,
            "max_question_length": data_args.max_question_length,
            "max_answer_length": data_args.max_answer_length,
            "image_column": data_args.image_column,
        },
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"Tokenising {description} questions and answers",
    )
