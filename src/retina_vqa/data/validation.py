"""Checking the data before any training step: every problem at once, with split, row and column.

A fine-tune that dies at hour three on one corrupt image costs a day. This pass reads the text columns
and decodes every distinct image once (images repeat across questions), then either stops with the
full report or, with ``--skip_invalid_examples``, drops the bad rows and counts them per reason.

In a distributed run every process decodes its share of the distinct images and all get the same report
(`validate_on_all_processes`); a report is kept next to the dataset's cache files, keyed by the splits'
fingerprints and the settings, so data validated before is not validated again. Images are decoded no
larger than ``decode_side`` (JPEGs at a reduced DCT scale): a full decode at that scale still reads every
byte, so truncated files are caught, without full-resolution memory.

Errors (the row cannot be used): empty or whitespace-only question or answer, a missing image,
undecodable / truncated / zero-size images, images over Pillow's decompression-bomb limit, images
smaller than one ViT patch. Warnings (the row is used): answers longer than ``--max_answer_length``
tokens (truncated), non-RGB images (converted), the same image in training and evaluation splits.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

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


def _image_rows(split: str, dataset: Dataset, column: str, report: ValidationReport) -> list[tuple[int, str, object]]:
    """``(row, key, image)`` of every row with an image; rows without one are reported here. A prepared split
    (data/preprocessing.py) brings its keys along, and question rows made from image rows carry the SHA-1 in
    their reference (data/image_table.py), so no image is read to key it more than once."""
    if isinstance(dataset.features.get(column), Image):
        dataset = dataset.cast_column(column, Image(decode=False))
    keyed = IMAGE_KEY in dataset.column_names
    images = dataset.select_columns([column, IMAGE_KEY] if keyed else [column])
    rows = []
    for start in range(0, len(images), _BATCH):
        batch = images[start : start + _BATCH]
        for offset, value in enumerate(batch[column]):
            row = start + offset
            if value is None or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
                report.problems.append(Problem(split, row, column, "missing image"))
                continue
            rows.append((row, batch[IMAGE_KEY][offset] if keyed else image_key(value), value))
    return rows


def _inspect_share(
    first: dict[str, tuple[str, object]], decode_side: int | None, rank: int = 0, world: int = 1
) -> dict[str, dict]:
    """Decode this process's share of the distinct images (every ``world``-th key from ``rank``, keys sorted so
    every process agrees on the shares): ``{key: outcome}``."""
    keys = sorted(first)[rank::world]
    outcomes = {}
    for key in tqdm(keys, desc="Checking images", unit="img", leave=False, disable=rank != 0):
        where, value = first[key]
        outcomes[key] = _inspect(value, where, decode_side)
    return outcomes


def _add_image_problems(
    report: ValidationReport,
    split: str,
    column: str,
    rows: list[tuple[int, str, object]],
    outcomes: dict[str, dict],
    hashes: dict,
) -> None:
    modes: collections.Counter = collections.Counter()
    hashes[split] = {key for _, key, _ in rows if not key.startswith("unreadable:")}
    for row, key, _ in rows:
        outcome = outcomes[key]
        if "reason" in outcome:
            report.problems.append(Problem(split, row, column, outcome["reason"], outcome["detail"]))
        elif outcome["mode"] != "RGB":
            modes[outcome["mode"]] += 1
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
    rank: int = 0,
    world: int = 1,
    gather=None,
) -> ValidationReport:
    """Check every split; nothing is raised here, the caller decides what to do with the report.

    Each distinct image (by key, across splits) is decoded once. Several processes share the decoding: each
    passes its ``rank`` of ``world`` and a ``gather`` that merges their outcome dicts (all get the same report)."""
    report = ValidationReport()
    rows: dict[str, list] = {}
    first: dict[str, tuple[str, object]] = {}
    for split, dataset in splits.items():
        _check_text(report, split, dataset, [question_column, answer_column])
        if tokenizer is not None and max_answer_length is not None:
            _check_answer_length(report, split, dataset, answer_column, tokenizer, max_answer_length)
        rows[split] = _image_rows(split, dataset, image_column, report)
        for row, key, value in rows[split]:
            first.setdefault(key, (f"{split} row {row}, column {image_column!r}", value))
    outcomes = _inspect_share(first, decode_side, rank, world)
    if gather is not None:
        outcomes = gather(outcomes)
    hashes: dict[str, set[str]] = {}
    for split in splits:
        _add_image_problems(report, split, image_column, rows[split], outcomes, hashes)
    _check_leakage(report, hashes, train_split)
    return report


def _gather_outcomes(outcomes: dict[str, dict]) -> dict[str, dict]:
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, outcomes)
    return {key: outcome for part in gathered for key, outcome in part.items()}


def validate_on_all_processes(splits: dict[str, Dataset], **kwargs) -> ValidationReport:
    """`validate_splits`, or its cached report (`cache_path`: a dataset validated before with the same settings
    is not validated again). In a distributed run every process decodes its share of the images and all get
    the same report, so they drop the same rows, and no process waits for one to check everything (at EyePACS
    size that would approach the distributed timeout). The main process decides whether the cache holds the
    report and writes it."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    rank = torch.distributed.get_rank() if distributed else 0
    path = cache_path(splits, **kwargs)
    cached = [_read_cache(path) if rank == 0 else None]
    if world > 1:
        torch.distributed.broadcast_object_list(cached, src=0)
    if cached[0] is not None:
        report = cached[0]
        # A warning, so that a user who changed files in place sees that the images were not checked again.
        logger.warning(
            "Data validated before (same splits by fingerprint, same settings): the report is read from %s; delete "
            "it to check the images again.",
            path,
        )
    else:
        gather = _gather_outcomes if world > 1 else None
        report = validate_splits(splits, rank=rank, world=world, gather=gather, **kwargs)
        if rank == 0:
            _write_cache(path, report)
    for warning in report.warnings:
        logger.warning(warning)
    return report


# Bumped when validation checks something new, so that earlier cached reports are not trusted.
_CACHE_VERSION = 1


def cache_path(splits: dict[str, Dataset], **kwargs) -> Path | None:
    """Where the report of these splits under these settings is kept: next to the datasets' own cache files,
    named by their fingerprints and the settings; None for data held in memory only."""
    folders = [os.path.dirname(d.cache_files[0]["filename"]) for d in splits.values() if d.cache_files]
    if not folders or len(folders) != len(splits):
        return None
    tokenizer = kwargs.get("tokenizer")
    settings = {
        "version": _CACHE_VERSION,
        "splits": {split: d._fingerprint for split, d in splits.items()},
        "rows": {split: len(d) for split, d in splits.items()},
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
        **{k: v for k, v in kwargs.items() if k != "tokenizer"},
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(folders[0]) / f"retina_vqa-validation-{digest}.json"


def _read_cache(path: Path | None) -> ValidationReport | None:
    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return ValidationReport([Problem(**p) for p in saved["problems"]], list(saved["warnings"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Ignoring the unreadable validation cache %s (%s); validating again.", path, error)
        return None


def _write_cache(path: Path | None, report: ValidationReport) -> None:
    if path is None:
        return
    saved = {"problems": [dataclasses.asdict(p) for p in report.problems], "warnings": report.warnings}
    try:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(saved), encoding="utf-8")
        temporary.replace(path)
    except OSError as error:  # a read-only dataset folder: validation simply runs again next time
        logger.info("Could not keep the validation report in %s (%s).", path, error)


def drop_invalid(dataset: Dataset, bad_rows: set[int]) -> Dataset:
    if not bad_rows:
        return dataset
    return dataset.select([i for i in range(len(dataset)) if i not in bad_rows])
