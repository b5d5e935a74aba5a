"""Checking the data before any training step: every problem at once, with split, row and column.

A fine-tune that dies at hour three on one corrupt image costs a day. This pass reads the text columns
and decodes every distinct image once (images repeat across questions), then either stops with the
full report or, with ``--skip_invalid_examples``, drops the bad rows and counts them per reason.

In a distributed run only the main process checks (`validate_on_main_process`) and the others receive its
report. Images are decoded no larger than ``decode_side`` (JPEGs at a reduced DCT scale): a full decode at
that scale still reads every byte, so truncated files are caught, without full-resolution memory.

Errors (the row cannot be used): empty or whitespace-only question or answer, a missing image,
undecodable / truncated / zero-size images, images over Pillow's decompression-bomb limit, images
smaller than one ViT patch. Warnings (the row is used): answers longer than ``--max_answer_length``
tokens (truncated), non-RGB images (converted), the same image in training and evaluation splits.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from datasets import Dataset, Image
from tqdm.auto import tqdm

from .images import ImageLoadError, image_key, load_image, probe_image
from .preprocessing import IMAGE_KEY

logger = logging.getLogger(__name__)

# Every released BLIP uses 16-pixel patches; an image smaller than one patch carries no usable detail.
MIN_IMAGE_SIDE = 16
# Decoding at this size is enough to prove an image usable (the processor resizes to 384 px or less).
DECODE_SIDE = 512
_BATCH = 256


@dataclass(frozen=True)
class Problem:
    split: str
    row: int
    column: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.split} row {self.row}, column {self.column!r}: {self.reason}{detail}"


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def bad_rows(self, split: str) -> set[int]:
        return {p.row for p in self.problems if p.split == split}

    def counts(self) -> dict[str, int]:
        """``invalid_examples/<split>/<reason>`` -> number of rows, for all_results.json."""
        counter = collections.Counter(f"invalid_examples/{p.split}/{p.reason}" for p in self.problems)
        return dict(sorted(counter.items()))

    def format(self, limit: int = 30) -> str:
        lines = [f"{len(self.problems)} problem(s) in the data:"]
        lines += [f"  - {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more ({self._summary()})")
        return "\n".join(lines)

    def _summary(self) -> str:
        counter = collections.Counter(f"{p.split}/{p.reason}" for p in self.problems)
        return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items()))


def _check_text(report: ValidationReport, split: str, dataset: Dataset, columns: Iterable[str]) -> None:
    text = dataset.select_columns(list(columns))
    for column in text.column_names:
        for row, value in enumerate(text[column]):
            if value is None or not str(value).strip():
                report.problems.append(Problem(split, row, column, f"empty {column}", "fill or remove the row"))


def _check_answer_length(
    report: ValidationReport, split: str, dataset: Dataset, column: str, tokenizer, max_length: int
) -> None:
    answers = [a or "" for a in dataset.select_columns([column])[column]]
    lengths = [len(ids) for ids in tokenizer(answers, add_special_tokens=True)["input_ids"]]
    too_long = [n for n in lengths if n > max_length]
    if too_long:
        report.warnings.append(
            f"{split}: {len(too_long)} answer(s) longer than --max_answer_length {max_length} tokens (longest "
            f"{max(too_long)}); they are truncated for training. Raise --max_answer_length to keep them whole."
        )


def _check_images(
    report: ValidationReport,
    split: str,
    dataset: Dataset,
    column: str,
    seen: dict[str, dict],
    hashes: dict,
    decode_side: int | None,
) -> None:
    """Decode each distinct image once; `seen` caches the outcome by image key across splits. A prepared split
    (data/preprocessing.py) brings its keys along, so no image is hashed twice."""
    if isinstance(dataset.features.get(column), Image):
        dataset = dataset.cast_column(column, Image(decode=False))
    keyed = IMAGE_KEY in dataset.column_names
    images = dataset.select_columns([column, IMAGE_KEY] if keyed else [column])
    modes: collections.Counter = collections.Counter()
    split_hashes: set[str] = set()
    progress = tqdm(total=len(images), desc=f"Checking {split} images", unit="row", leave=False)
    for start in range(0, len(images), _BATCH):
        batch = images[start : start + _BATCH]
        for offset, value in enumerate(batch[column]):
            row = start + offset
            progress.update(1)
            if value is None or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
                report.problems.append(Problem(split, row, column, "missing image"))
                continue
            where = f"{split} row {row}, column {column!r}"
            key = batch[IMAGE_KEY][offset] if keyed else image_key(value)
            if not key.startswith("unreadable:"):
                split_hashes.add(key)
            if key not in seen:
                seen[key] = _inspect(value, where, decode_side)
            outcome = seen[key]
            if "reason" in outcome:
                report.problems.append(Problem(split, row, column, outcome["reason"], outcome["detail"]))
            elif outcome["mode"] != "RGB":
                modes[outcome["mode"]] += 1
    progress.close()
    hashes[split] = split_hashes
    if modes:
        report.warnings.append(
            f"{split}: converted non-RGB images to RGB ({', '.join(f'{m}: {n} rows' for m, n in modes.items())})."
        )


def _inspect(value, where: str, decode_side: int | None = DECODE_SIDE) -> dict:
    try:
        width, height, mode = probe_image(value, where=where)
        # A decode of every byte catches truncated files the header probe misses; no larger than needed.
        load_image(value, where=where, max_side=decode_side)
    except ImageLoadError as error:
        return {"reason": "unreadable image", "detail": error.reason}
    if min(width, height) < MIN_IMAGE_SIDE:
        return {"reason": "image smaller than one patch", "detail": f"{width}x{height} < {MIN_IMAGE_SIDE} px"}
    return {"mode": mode}


def _check_leakage(report: ValidationReport, hashes: dict[str, set[str]], train_split: str) -> None:
    train = hashes.get(train_split)
    if not train:
        return
    for split, split_hashes in hashes.items():
        shared = train & split_hashes if split != train_split else set()
        if shared:
            report.warnings.append(
                f"{len(shared)} image(s) of the {split!r} split are also in {train_split!r} (same bytes): "
                "leakage inflates every metric on that split. Split by image (or by patient)."
            )


def validate_splits(
    splits: dict[str, Dataset],
    *,
    image_column: str,
    question_column: str,
    answer_column: str,
    tokenizer=None,
    max_answer_length: int | None = None,
    train_split: str = "train",
    decode_side: int | None = DECODE_SIDE,
) -> ValidationReport:
    """Check every split; nothing is raised here, the caller decides what to do with the report."""
    report = ValidationReport()
    seen: dict[str, dict] = {}
    hashes: dict[str, set[str]] = {}
    for split, dataset in splits.items():
        _check_text(report, split, dataset, [question_column, answer_column])
        if tokenizer is not None and max_answer_length is not None:
            _check_answer_length(report, split, dataset, answer_column, tokenizer, max_answer_length)
        _check_images(report, split, dataset, image_column, seen, hashes, decode_side)
    _check_leakage(report, hashes, train_split)
    for warning in report.warnings:
        logger.warning(warning)
    return report


def validate_on_main_process(splits: dict[str, Dataset], **kwargs) -> ValidationReport:
    """`validate_splits` on the main process only; in a distributed run the other processes receive its report
    (they would otherwise each decode every image again) and so drop the same rows."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_world_size() == 1:
        return validate_splits(splits, **kwargs)
    shared = [validate_splits(splits, **kwargs) if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def drop_invalid(dataset: Dataset, bad_rows: set[int]) -> Dataset:
    if not bad_rows:
        return dataset
    return dataset.select([i for i in range(len(dataset)) if i not in bad_rows])
