"""Synthetic retinal fundus VQA data in the exact format of the private training set.

The generator draws colour fundus photographs with diabetic retinopathy lesions graded on the ICDR
scale (0-4) and, with ``--conditions``, glaucoma, age-related macular degeneration, hypertensive retinopathy
and retinal vein occlusion at their own stages; turns each image into one question/answer row per question
type (findings reports included), and saves the result (``save_to_disk`` or ``imagefolder``) with a dataset
card. Its parts:

- :mod:`.conditions`: which conditions, their stages, prevalence and co-occurrence (the ground truth of an eye);
- :mod:`.anatomy`: the healthy eye (field of view, background, macula, disc, vessels) and drawing primitives;
- :mod:`.lesions`: the diabetic retinopathy lesions of each ICDR grade;
- :mod:`.signs`: the signs of the other conditions;
- :mod:`.render`: one eye from its ground truth to pixels, boxes and findings (illumination, quality defects);
- :mod:`.camera`: camera and site profiles (``--camera``): the drawn eye photographed by another camera;
- :mod:`.reports`: the findings report of an eye (the "describe the findings" answer);
- :mod:`.build`: dataset assembly (per-image random generators, grades per split, rows, ``generate_dataset``);
- :mod:`.export`: ``save_dataset``, the imagefolder layout, the dataset card and the preview grid;
- :mod:`.__main__`: the command line.

The question wordings and answers live in :mod:`retina_vqa.questions`, shared with builders of real
datasets. This package re-exports the names that code outside it imports, so ``from
retina_vqa.synthetic import generate_dataset`` keeps working.

Usage::

    python -m retina_vqa.synthetic --output_dir data/retinavqa-synthetic
    python -m retina_vqa.synthetic --preview preview.png --image_size 384
    python -m retina_vqa.synthetic --output_dir data/retinavqa-multidisease --conditions all
    python -m retina_vqa.synthetic --preview preview.png --conditions all --image_size 128
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..questions import (
    BLINDNESS_ANSWERS,
    CAUSE_ANSWERS,
    CONDITION_QUESTION_TYPES,
    COUNT_WORDS,
    DIAGNOSIS_ANSWERS,
    FINDINGS,
    HAEMORRHAGE_TYPES,
    LESION_TYPES,
    MODALITY_ANSWER,
    PRESENCE_TYPES,
    QUESTION_TYPES,
    all_texts,
    answer_for,
    condition_texts,
    count_haemorrhage_quadrants,
    haemorrhage_quadrant,
)
from .build import SPLITS, condition_question_types, dataset_features, generate_dataset, validate_grade_weights
from .conditions import CONDITIONS, DEFAULT_PREVALENCE, ConditionState, sample_conditions
from .export import FORMATS, preview_label_height, render_preview, save_dataset, write_dataset_card
from .render import (
    FOV_RADIUS_FRACTION,
    LATERALITIES,
    MIN_IMAGE_SIZE,
    QUALITIES,
    RenderedEye,
    fov_geometry,
    render_eye,
    render_fundus,
)
from .reports import report_texts, write_report

if TYPE_CHECKING:
    from .__main__ import build_parser, main

__all__ = [
    "BLINDNESS_ANSWERS",
    "CAUSE_ANSWERS",
    "CONDITIONS",
    "CONDITION_QUESTION_TYPES",
    "COUNT_WORDS",
    "DEFAULT_PREVALENCE",
    "DIAGNOSIS_ANSWERS",
    "FINDINGS",
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
    "ConditionState",
    "RenderedEye",
    "all_texts",
    "answer_for",
    "build_parser",
    "condition_question_types",
    "condition_texts",
    "count_haemorrhage_quadrants",
    "dataset_features",
    "fov_geometry",
    "generate_dataset",
    "haemorrhage_quadrant",
    "main",
    "preview_label_height",
    "render_eye",
    "render_fundus",
    "render_preview",
    "report_texts",
    "sample_conditions",
    "save_dataset",
    "validate_grade_weights",
    "write_dataset_card",
    "write_report",
]

_CLI_NAMES = ("build_parser", "main")


def __getattr__(name: str) -> Any:
    # The CLI is imported on first use, not here: `python -m retina_vqa.synthetic` imports this package
    # before running __main__, and a __main__ already imported by then would make runpy warn.
    if name in _CLI_NAMES:
        from . import __main__ as cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
