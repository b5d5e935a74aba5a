"""Assembly of the synthetic RetinaVQA dataset from rendered images.

This module owns everything between a drawn image and a ``datasets.DatasetDict``: the per-image random
generators, the grades of each split, argument checks, the column types (``dataset_features``), one
question/answer row per (image, question type) and ``generate_dataset`` itself. Pixels come from
:mod:`.render`, question wordings and answers from :mod:`retina_vqa.questions`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..questions import QUESTION_TYPES, answer_for
from .render import LATERALITIES, MIN_IMAGE_SIZE, QUALITIES, render_fundus

if TYPE_CHECKING:
    import datasets

__all__ = ["SPLITS", "dataset_features", "generate_dataset", "render_example", "validate_grade_weights"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Bump when the drawing or the rows change, so that dataset fingerprints (cache keys) change with it.
_GENERATOR_VERSION = 2


def _image_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # Keyed by (seed, split, index) so an image does not depend on which worker draws it or on the
    # other splits' sizes; separate streams keep paraphrase choice from changing the pixels.
    split_key = {"train": 0, "validation": 1, "test": 2, "preview": 3}[split]
    return np.random.default_rng([seed, split_key, index, stream])


def _draw_quality(rng: np.random.Generator, defect_rate: float) -> str:
    if rng.random() < defect_rate:
        return str(rng.choice(QUALITIES[1:]))
    return "good"


def render_example(task: tuple[int, str, int, int, int, float]) -> dict[str, Any]:
    """Draw one image for ``(seed, split, index, grade, image_size, quality_defect_rate)``.

    Returns its PNG bytes and metadata (``image_id``, ``grade``, ``laterality``, ``quality``, ``lesions``).
    One tuple argument, so that ``Pool.map`` can call it; the result depends on nothing else.
    """
    seed, split, index, grade, image_size, defect_rate = task
    rng = _image_rng(seed, split, index, 0)
    laterality = LATERALITIES[int(rng.integers(0, 2))]
    quality = _draw_quality(rng, defect_rate)
    image, lesions = render_fundus(rng, image_size, grade, laterality, quality)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return {
        "png": buf.getvalue(),
        "image_id": f"{split}-{index:05d}",
        "grade": grade,
        "laterality": laterality,
        "quality": quality,
        "lesions": lesions,
    }


def _split_grades(n: int, weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """Grades for ``n`` images, matching ``weights`` as closely as whole numbers allow, in random order."""
    w = np.asarray(weights, dtype=np.float64)
    quota = w / w.sum() * n
    counts = np.floor(quota).astype(int)
    # Largest remainder, so balanced weights give per-grade counts that differ by at most one.
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    grades = np.repeat(np.arange(5), counts)
    return [int(g) for g in rng.permutation(grades)]


def validate_grade_weights(grade_weights: Sequence[float] | str | None) -> tuple[float, ...]:
    """Parse and check ``--grade_weights``: five non-negative numbers, not all zero."""
    if grade_weights is None:
        return (1.0,) * 5
    if isinstance(grade_weights, str):
        try:
            values = tuple(float(v) for v in grade_weights.split(","))
        except ValueError:
            raise ValueError(
                f"--grade_weights must be five comma-separated numbers such as 1,1,1,1,1; got {grade_weights!r}"
            ) from None
    else:
        values = tuple(float(v) for v in grade_weights)
    if len(values) != 5:
        raise ValueError(f"--grade_weights needs exactly 5 numbers (one per grade 0-4), got {len(values)}")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--grade_weights must be non-negative finite numbers, got {values}")
    if sum(values) == 0:
        raise ValueError("--grade_weights must not all be zero; use e.g. 1,1,1,1,1 for balanced grades")
    return values


def _validate_args(
    counts: Mapping[str, int],
    image_size: int,
    quality_defect_rate: float,
    question_types: Sequence[str] | None,
) -> None:
    for name, n in counts.items():
        if int(n) != n or n < 0:
            raise ValueError(f"--{name} must be a non-negative integer, got {n}")
    if sum(counts.values()) == 0:
        raise ValueError("all image counts are zero; set --num_train_images (and the others) to at least 1")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if not 0.0 <= quality_defect_rate <= 1.0:
        raise ValueError(f"--quality_defect_rate must be between 0 and 1, got {quality_defect_rate}")
    if question_types is not None:
        unknown = [q for q in question_types if q not in QUESTION_TYPES]
        if unknown or not question_types:
            raise ValueError(
                f"--question_types has unknown or no types {unknown}; choose from {', '.join(QUESTION_TYPES)}"
            )


def dataset_features() -> datasets.Features:
    """The explicit column types of every split."""
    # Imported here: rendering workers only need numpy and Pillow.
    import datasets

    box = {
        "type": datasets.Value("string"),
        "x0": datasets.Value("int32"),
        "y0": datasets.Value("int32"),
        "x1": datasets.Value("int32"),
        "y1": datasets.Value("int32"),
    }
    return datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answer_type": datasets.Value("string"),
            "grade": datasets.Value("int32"),
            "laterality": datasets.Value("string"),
            "quality": datasets.Value("string"),
            "lesions": datasets.List(box),
        }
    )


def _rows_for(
    example: Mapping[str, Any],
    question_types: Sequence[str],
    paraphrase: bool,
    seed: int,
    split: str,
    index: int,
    image_size: int,
) -> dict[str, list]:
    rng = _image_rng(seed, split, index, 1)
    rows: dict[str, list] = collections.defaultdict(list)
    for qt in question_types:
        info = QUESTION_TYPES[qt]
        options = info["paraphrases"]
        question = options[int(rng.integers(0, len(options)))] if paraphrase else info["question"]
        rows["question"].append(question)
        rows["answer"].append(
            answer_for(
                qt,
                example["grade"],
                example["laterality"],
                example["quality"],
                example["lesions"],
                image_size,
            )
        )
        rows["image_id"].append(example["image_id"])
        rows["question_type"].append(qt)
        rows["answer_type"].append(info["answer_type"])
        rows["grade"].append(example["grade"])
        rows["laterality"].append(example["laterality"])
        rows["quality"].append(example["quality"])
        rows["lesions"].append(example["lesions"])
    return rows


def _default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def generate_dataset(
    num_train_images: int,
    num_validation_images: int,
    num_test_images: int,
    image_size: int = 384,
    seed: int = 0,
    grade_weights: Sequence[float] | None = None,
    paraphrase: bool = False,
    quality_defect_rate: float = 0.1,
    question_types: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> datasets.DatasetDict:
    """Generate train/validation/test splits with one row per (image, question type).

    Images are split-disjoint; every image and every paraphrase choice is determined by
    (seed, split, image index) alone, so the same arguments always give the same dataset.
    """
    import datasets

    counts = {
        "num_train_images": num_train_images,
        "num_validation_images": num_validation_images,
        "num_test_images": num_test_images,
    }
    _validate_args(counts, image_size, quality_defect_rate, question_types)
    weights = validate_grade_weights(grade_weights)
    qtypes = list(question_types) if question_types is not None else list(QUESTION_TYPES)
    workers = _default_workers() if num_workers is None else max(1, int(num_workers))
    features = dataset_features()

    tasks: dict[str, list[tuple]] = {}
    for split, n in zip(SPLITS, counts.values(), strict=True):
        grades = _split_grades(int(n), weights, np.random.default_rng([seed, SPLITS.index(split), 2**31]))
        tasks[split] = [(seed, split, i, g, image_size, quality_defect_rate) for i, g in enumerate(grades)]
    flat = [t for split in SPLITS for t in tasks[split]]
    logger.info("Rendering %d images at %d px with %d worker(s)", len(flat), image_size, workers)
    if workers > 1 and len(flat) > 8:
        # fork is cheap and the workers need nothing but numpy and Pillow; results come back in order.
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(workers) as pool:
            rendered = pool.map(render_example, flat, chunksize=8)
    else:
        rendered = [render_example(t) for t in flat]

    params = [
        seed,
        image_size,
        weights,
        paraphrase,
        quality_defect_rate,
        qtypes,
        dict(counts),
        _GENERATOR_VERSION,
    ]
    splits = {}
    offset = 0
    for split in SPLITS:
        examples = rendered[offset : offset + len(tasks[split])]
        offset += len(tasks[split])
        fingerprint = hashlib.sha256(json.dumps([*params, split]).encode()).hexdigest()[:16]
        splits[split] = _build_split(examples, qtypes, paraphrase, seed, split, image_size, features, fingerprint)
    return datasets.DatasetDict(splits)


def _build_split(
    examples: Sequence[Mapping[str, Any]],
    qtypes: Sequence[str],
    paraphrase: bool,
    seed: int,
    split: str,
    image_size: int,
    features: datasets.Features,
    fingerprint: str,
) -> datasets.Dataset:
    """Assemble one split straight in Arrow.

    Every image is repeated once per question type; building the rows through ``Dataset.from_dict``
    would copy and hash each PNG that many times in Python, which dominated the run time.
    """
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    schema = features.arrow_schema
    columns: dict[str, list] = collections.defaultdict(list)
    for i, example in enumerate(examples):
        for key, values in _rows_for(example, qtypes, paraphrase, seed, split, i, image_size).items():
            columns[key].extend(values)
    unique_images = pa.StructArray.from_arrays(
        [pa.array([e["png"] for e in examples], pa.binary()), pa.nulls(len(examples), pa.string())],
        fields=list(schema.field("image").type),
    )
    take = pa.array(np.repeat(np.arange(len(examples), dtype=np.int64), len(qtypes)))
    arrays = []
    for field in schema:
        if field.name == "image":
            arrays.append(unique_images.take(take))
        else:
            arrays.append(pa.array(columns.get(field.name, []), type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    return datasets.Dataset(
        InMemoryTable(table),
        info=datasets.DatasetInfo(features=features),
        split=datasets.NamedSplit(split),
        fingerprint=fingerprint,
    )
