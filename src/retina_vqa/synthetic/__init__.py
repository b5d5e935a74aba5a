"""Synthetic retinal fundus VQA data in the exact format of the private training set.

The generator draws colour fundus photographs with diabetic retinopathy lesions graded on the ICDR
scale (0-4), turns each image into one question/answer row per question type, and saves the result
(``save_to_disk`` or ``imagefolder``) with a dataset card. Its parts:

- :mod:`.render`: the drawing (anatomy, vessels, lesions and their boxes, quality defects, field of view);
- :mod:`.build`: dataset assembly (per-image random generators, grades per split, rows, ``generate_dataset``);
- :mod:`.export`: ``save_dataset``, the imagefolder layout, the dataset card and the preview grid;
- :mod:`.__main__`: the command line.

The question wordings and answers live in :mod:`retina_vqa.questions`, shared with builders of real
datasets. This package re-exports the names that code outside it imports, so ``from
retina_vqa.synthetic import generate_dataset`` keeps working.

Usage::

    python -m retina_vqa.synthetic --output_dir data/retinavqa-synthetic
    python -m retina_vqa.synthetic --preview preview.png --image_size 384
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..questions import (
    BLINDNESS_ANSWERS,
    CAUSE_ANSWERS,
    COUNT_WORDS,
    DIAGNOSIS_ANSWERS,
    HAEMORRHAGE_TYPES,
    LESION_TYPES,
    MODALITY_ANSWER,
    PRESENCE_TYPES,
    QUESTION_TYPES,
    all_texts,
    answer_for,
    count_haemorrhage_quadrants,
    haemorrhage_quadrant,
)
from .build import SPLITS, dataset_features, generate_dataset, validate_grade_weights
from .export import FORMATS, preview_label_height, render_preview, save_dataset, write_dataset_card
from .render import FOV_RADIUS_FRACTION, LATERALITIES, MIN_IMAGE_SIZE, QUALITIES, fov_geometry, render_fundus

if TYPE_CHECKING:
    from .__main__ import build_parser, main

__all__ = [
    "BLINDNESS_ANSWERS",
    "CAUSE_ANSWERS",
    "COUNT_WORDS",
    "DIAGNOSIS_ANSWERS",
    "FORMATS",
    "FOV_RADIUS_FRACTION",
    "HAEMORRHAGE_TYPES",
    "LATERALITIES",
    "LESION_TYPES",
    "MIN_IMAGE_SIZE",
    "MODALITY_ANSWER",
    "PRESENCE_TYPES",
    "QUALITIES",
    "QUESTION_TYPES",
    "SPLITS",
    "all_texts",
    "answer_for",
    "build_parser",
    "count_haemorrhage_quadrants",
    "dataset_features",
    "fov_geometry",
    "generate_dataset",
    "haemorrhage_quadrant",
    "main",
    "preview_label_height",
    "render_fundus",
    "render_preview",
    "save_dataset",
    "validate_grade_weights",
    "write_dataset_card",
]

_CLI_NAMES = ("build_parser", "main")


def __getattr__(name: str) -> Any:
    # The CLI is imported on first use, not here: `python -m retina_vqa.synthetic` imports this package
    # before running __main__, and a __main__ already imported by then would make runpy warn.
    if name in _CLI_NAMES:
        from . import __main__ as cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
