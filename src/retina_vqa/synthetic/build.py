"""Assembly of the synthetic RetinaVQA dataset from rendered images.

This module owns everything between a drawn image and a ``datasets.DatasetDict``: the per-image random
generators, the grades of each split, argument checks, the column types (``dataset_features``), one
question/answer row per (image, question type) and ``generate_dataset`` itself. Pixels come from
:mod:`.render`, question wordings and answers from :mod:`retina_vqa.questions`, findings reports from
:mod:`.reports`.

Each image has its generators keyed by (seed, split, index, stream): stream 0 draws the DR eye, 1 the question
paraphrases, 2 the other conditions (:mod:`.conditions`), 4 the report wording, 5 the patient of a pair (which eye
comes first, the fellow eye's DR grade; keyed by the pair's first image), 6 the camera (:mod:`.camera`: the
per-image variation of a non-default profile), 10-13 the signs of glaucoma, AMD, hypertensive retinopathy and vein
occlusion. A DR-only dataset (``conditions=("dr",)``, the default, with
DR question types) touches streams 0 and 1 only and has the columns it always had, so it is byte-identical to
the output of the generator before the other conditions; asking for another condition or one of
``questions.CONDITION_QUESTION_TYPES`` adds a ``conditions`` column (stages, cup-to-disc ratio, findings).

``eyes_per_patient=2`` draws patients instead of independent images: images 2k and 2k+1 of a split are one patient's
right and left eye (a ``patient_id`` column), their DR grades agree as a patient's two eyes do
(``fellow_eye_kernel``). The default, 1, draws and writes exactly what it did before.

``camera`` (:data:`.camera.CAMERAS`) photographs every image through another camera or site profile after it is
drawn (colour cast, fall-off, field and mask, resolution, JPEG); the eyes, rows and answers are those of the default
camera with the same seed, so splits drawn with two cameras hold the same eyes. The default camera leaves the output
byte-identical.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..questions import CONDITION_QUESTION_TYPES, QUESTION_TYPES, REPORT_QUESTION_TYPE, answer_for, condition_answer_for
from .camera import CAMERAS, DEFAULT_CAMERA, apply_camera, encode_image, parse_camera
from .conditions import OTHER_CONDITIONS, parse_conditions, parse_prevalence, sample_conditions
from .render import (
    DEFAULT_QUALITY_DEFECTS,
    LATERALITIES,
    MIN_IMAGE_SIZE,
    QUALITY_DEFECTS,
    render_eye,
    render_fundus,
)
from .reports import write_report

if TYPE_CHECKING:
    import datasets

__all__ = [
    "EYES_PER_PATIENT",
    "FELLOW_EYE_AGREEMENT",
    "SPLITS",
    "condition_question_types",
    "dataset_features",
    "fellow_eye_kernel",
    "generate_dataset",
    "parse_quality_defects",
    "render_example",
    "validate_grade_weights",
    "with_camera",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Bump when the drawing or the rows change, so that dataset fingerprints (cache keys) change with it.
_GENERATOR_VERSION = 2


# Streams of an image's generators (see the module docstring); 0 and 1 are the DR-only generator's.
_STREAM_CONDITIONS = 2
_STREAM_REPORT = 4
_STREAM_PATIENT = 5
_STREAM_CAMERA = 6
_STREAM_SIGNS = 10
EYES_PER_PATIENT = (1, 2)
# Share of patients whose two eyes have the same DR grade. DR is largely symmetric between the eyes: most patients
# have the same ICDR grade in both, most of the others grades one step apart, and asymmetry of two or more steps is
# uncommon.
FELLOW_EYE_AGREEMENT = 0.70
# Relative chance of proposing a fellow eye one or two grades away from the first (see fellow_eye_kernel); never three.
# With balanced weights: 27.5% of pairs one grade apart, 2.5% two.
_FELLOW_EYE_STEPS = {1: 1.0, 2: 0.12}
# DR notebook questions whose answers speak of diabetic retinopathy alone ("can this condition cause blindness?"
# would answer "no" for an eye blinded by a vein occlusion): not asked by default when other conditions are drawn.
_DR_ONLY_TYPES = ("blindness", "cause")


def _image_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # Keyed by (seed, split, index) so an image does not depend on which worker draws it or on the
    # other splits' sizes; separate streams keep paraphrase choice from changing the pixels.
    split_key = {"train": 0, "validation": 1, "test": 2, "preview": 3}[split]
    return np.random.default_rng([seed, split_key, index, stream])


def _draw_quality(
    rng: np.random.Generator, defect_rate: float, defects: Sequence[str] = DEFAULT_QUALITY_DEFECTS
) -> str:
    # The same two draws whatever the defects: the default three give exactly the qualities of before.
    if rng.random() < defect_rate:
        return str(rng.choice(tuple(defects)))
    return "good"


def parse_quality_defects(quality_defects: Sequence[str] | str | None) -> tuple[str, ...]:
    """Check ``--quality_defects``: a comma-separated string or a list of ``render.QUALITY_DEFECTS`` (default: the
    first three, blurred, underexposed, overexposed); duplicates dropped, order kept."""
    if quality_defects is None:
        return DEFAULT_QUALITY_DEFECTS
    names = quality_defects.split(",") if isinstance(quality_defects, str) else list(quality_defects)
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in QUALITY_DEFECTS]
    if unknown or not names:
        raise ValueError(
            f"--quality_defects has unknown or no defect kinds {unknown}; choose one or more of "
            f"{','.join(QUALITY_DEFECTS)} (default {','.join(DEFAULT_QUALITY_DEFECTS)})"
        )
    return tuple(dict.fromkeys(names))


def with_camera(task: tuple, camera: str) -> tuple:
    """``task`` (of `render_example`) photographed by ``camera``: the optional items before it filled with their
    defaults; the default camera leaves the task as it is."""
    if camera == DEFAULT_CAMERA:
        return task
    defaults = (None, DEFAULT_QUALITY_DEFECTS, None)  # conditions, defect kinds, patient
    return (*task[:9], *defaults[max(0, len(task) - 6) :], camera)


def render_example(task: tuple) -> dict[str, Any]:
    """Draw one image for ``(seed, split, index, grade, image_size, quality_defect_rate[, conditions[, defects[,
    patient[, camera]]]])``.

    Returns its encoded file (``image_bytes``: PNG, or JPEG for a camera that stores JPEG) and metadata (``image_id``,
    ``grade``, ``laterality``, ``quality``, ``lesions``).
    The optional seventh item ``(enabled conditions, prevalence items, forced ConditionState or None)`` draws
    the other conditions too and adds ``conditions`` (stages, cup-to-disc ratio, branch quadrant, findings); None
    leaves them out. The optional eighth item is the defect kinds a defective image draws from (default
    ``render.DEFAULT_QUALITY_DEFECTS``). The optional ninth item ``(patient_id, laterality)`` makes the image that
    eye of that patient and adds ``patient_id``. The optional tenth item names the camera (`camera.CAMERAS`, default
    "default"; `with_camera` builds such a task), which photographs the drawn image from the image's generator of
    stream 6. One tuple argument, so that ``Pool.map`` can call it; the result depends on nothing else.
    """
    seed, split, index, grade, image_size, defect_rate = task[:6]
    spec = task[6] if len(task) > 6 else None
    defects = task[7] if len(task) > 7 else DEFAULT_QUALITY_DEFECTS
    patient = task[8] if len(task) > 8 else None
    camera = task[9] if len(task) > 9 else DEFAULT_CAMERA
    rng = _image_rng(seed, split, index, 0)
    laterality = LATERALITIES[int(rng.integers(0, 2))]
    if patient is not None:
        # The patient decides the eye; the draw above still happens, so the rest of the image draws as a single eye.
        patient_id, laterality = patient
    quality = _draw_quality(rng, defect_rate, defects)
    meta = None
    if spec is None:
        image, lesions = render_fundus(rng, image_size, grade, laterality, quality)
    else:
        enabled, prevalence, forced = spec
        state = forced or sample_conditions(
            _image_rng(seed, split, index, _STREAM_CONDITIONS), enabled, dict(prevalence)
        )
        sign_rngs = {
            c: _image_rng(seed, split, index, _STREAM_SIGNS + i) for i, c in enumerate(OTHER_CONDITIONS) if c in enabled
        }
        eye = render_eye(rng, image_size, grade, laterality, quality, state, sign_rngs)
        image, lesions = eye.image, eye.lesions
        meta = {
            "diseases": (["dr"] if grade > 0 else []) + list(state.present()),
            **{c: state.stage(c) for c in OTHER_CONDITIONS},
            "cup_to_disc": eye.cup_to_disc,
            "rvo_quadrant": state.rvo_quadrant,
            "findings": list(eye.findings),
        }
    profile = CAMERAS[camera]
    if camera != DEFAULT_CAMERA:
        # After drawing, from a generator of its own: the eye is that of the default camera, draw for draw.
        image, lesions = apply_camera(profile, image, lesions, _image_rng(seed, split, index, _STREAM_CAMERA))
    example = {
        "image_bytes": encode_image(image, profile),
        "image_id": f"{split}-{index:05d}",
        "grade": grade,
        "laterality": laterality,
        "quality": quality,
        "lesions": lesions,
    }
    if patient is not None:
        example["patient_id"] = patient_id
    if meta is not None:
        example["conditions"] = meta
        example["enabled"] = tuple(enabled)
    return example


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


def fellow_eye_kernel(weights: Sequence[float], agreement: float = FELLOW_EYE_AGREEMENT) -> np.ndarray:
    """``kernel[i, j]``: the chance that a patient's second eye has DR grade j when the first has grade i.

    A Metropolis kernel: a step of one or two grades (``_FELLOW_EYE_STEPS``) accepted with probability
    min(1, w_j / w_i), so that ``weights @ kernel == weights`` (up to normalising): fellow eyes keep the grade mix of
    the first eyes, and no eye gets a grade of weight zero. The steps are scaled so that the eyes agree in
    ``agreement`` of the pairs whatever the weights (with skewed weights the rare grades carry more of the
    asymmetry); weights that leave no room to move (a single grade) make every pair agree.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    step = np.abs(np.subtract.outer(np.arange(5), np.arange(5)))
    proposal = np.zeros((5, 5))
    for size, chance in _FELLOW_EYE_STEPS.items():
        proposal[step == size] = chance
    # w_i * kernel[i, j] = scale * proposal[i, j] * min(w_i, w_j): symmetric (detailed balance), so w is kept.
    flow = proposal * np.minimum.outer(w, w)
    leave = np.divide(flow, w[:, None], out=np.zeros((5, 5)), where=w[:, None] > 0)
    scale = 0.0
    if flow.sum() > 0:
        scale = min((1.0 - agreement) / flow.sum(), 1.0 / leave.sum(axis=1).max())
    kernel = scale * leave
    kernel[np.diag_indices(5)] = 1.0 - kernel.sum(axis=1)
    return kernel


def _split_patients(
    split: str, n: int, weights: Sequence[float], seed: int, grade_rng: np.random.Generator
) -> tuple[list[int], list[tuple[str, str]]]:
    """Grades and ``(patient_id, laterality)`` of a split of ``n`` images, two eyes per patient.

    The first eyes' grades are the split's grade list for ``n // 2`` patients (``_split_grades``); the fellow eye's
    grade is drawn from ``fellow_eye_kernel``, and which eye comes first from the patient's generator.
    """
    kernel = fellow_eye_kernel(weights)
    grades: list[int] = []
    eyes: list[tuple[str, str]] = []
    for k, first_grade in enumerate(_split_grades(n // 2, weights, grade_rng)):
        rng = _image_rng(seed, split, 2 * k, _STREAM_PATIENT)
        first = int(rng.integers(0, 2))
        fellow_grade = int(rng.choice(5, p=kernel[first_grade]))
        patient_id = f"{split}-p{k:05d}"
        grades += [first_grade, fellow_grade]
        eyes += [(patient_id, LATERALITIES[first]), (patient_id, LATERALITIES[1 - first])]
    return grades, eyes


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


def condition_question_types(enabled: Sequence[str]) -> list[str]:
    """The default question types of a dataset drawing ``enabled`` conditions (all DR types when DR only)."""
    enabled = parse_conditions(enabled)
    if enabled == ("dr",):
        return list(QUESTION_TYPES)
    types = [q for q in QUESTION_TYPES if q not in _DR_ONLY_TYPES]
    for q in CONDITION_QUESTION_TYPES:
        condition = q.rpartition("_")[0]
        if condition in OTHER_CONDITIONS and condition not in enabled:
            continue
        if q == "cup_to_disc" and "glaucoma" not in enabled:
            continue
        types.append(q)
    return types


def _validate_args(
    counts: Mapping[str, int],
    image_size: int,
    quality_defect_rate: float,
    question_types: Sequence[str] | None,
    enabled: Sequence[str] = ("dr",),
    eyes_per_patient: int = 1,
) -> None:
    for name, n in counts.items():
        if int(n) != n or n < 0:
            raise ValueError(f"--{name} must be a non-negative integer, got {n}")
    if eyes_per_patient not in EYES_PER_PATIENT:
        raise ValueError(
            f"--eyes_per_patient must be 1 (independent images, the default) or 2 (each patient's right and left "
            f"eye), got {eyes_per_patient!r}"
        )
    if eyes_per_patient == 2:
        for split, (name, n) in zip(SPLITS, counts.items(), strict=True):
            if n % 2:
                raise ValueError(
                    f"--{name} is {n}, odd: with --eyes_per_patient 2 every patient of the {split} split has two "
                    f"images; pass an even number ({n - 1} or {n + 1})"
                )
    if sum(counts.values()) == 0:
        raise ValueError("all image counts are zero; set --num_train_images (and the others) to at least 1")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if not 0.0 <= quality_defect_rate <= 1.0:
        raise ValueError(f"--quality_defect_rate must be between 0 and 1, got {quality_defect_rate}")
    if question_types is not None:
        known = [*QUESTION_TYPES, *CONDITION_QUESTION_TYPES]
        unknown = [q for q in question_types if q not in known]
        if unknown or not question_types:
            raise ValueError(f"--question_types has unknown or no types {unknown}; choose from {', '.join(known)}")
        if "cup_to_disc" in question_types and "glaucoma" not in enabled:
            raise ValueError(
                "--question_types cup_to_disc needs the drawn cup: add glaucoma to --conditions (e.g. dr,glaucoma)"
            )


def row_columns() -> dict[str, Any]:
    """The columns every RetinaVQA row has, in order, with their types: the synthetic set's and the dataset
    builder's (`retina_vqa.build_dataset`) alike, so that run_vqa.py reads both the same way."""
    import datasets

    return {
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "image_id": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "grade": datasets.Value("int32"),
    }


def dataset_features(multidisease: bool = False, patients: bool = False) -> datasets.Features:
    """The explicit column types of every split; ``multidisease`` adds the ``conditions`` column, ``patients`` the
    ``patient_id`` column (two eyes per patient)."""
    # Imported here: rendering workers only need numpy and Pillow.
    import datasets

    box = {
        "type": datasets.Value("string"),
        "x0": datasets.Value("int32"),
        "y0": datasets.Value("int32"),
        "x1": datasets.Value("int32"),
        "y1": datasets.Value("int32"),
    }
    columns = {
        **row_columns(),
        "laterality": datasets.Value("string"),
        "quality": datasets.Value("string"),
        "lesions": datasets.List(box),
    }
    if patients:
        columns["patient_id"] = datasets.Value("string")
    if multidisease:
        columns["conditions"] = {
            "diseases": datasets.List(datasets.Value("string")),
            **{c: datasets.Value("string") for c in OTHER_CONDITIONS},
            "cup_to_disc": datasets.Value("float32"),
            "rvo_quadrant": datasets.Value("string"),
            "findings": datasets.List(datasets.Value("string")),
        }
    return datasets.Features(columns)


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
        info = QUESTION_TYPES[qt] if qt in QUESTION_TYPES else CONDITION_QUESTION_TYPES[qt]
        options = info["paraphrases"]
        question = options[int(rng.integers(0, len(options)))] if paraphrase else info["question"]
        rows["question"].append(question)
        if "conditions" in example:
            answer = _condition_answer(example, qt, seed, split, index, image_size)
        else:
            answer = answer_for(
                qt,
                example["grade"],
                example["laterality"],
                example["quality"],
                example["lesions"],
                image_size,
            )
        rows["answer"].append(answer)
        rows["image_id"].append(example["image_id"])
        rows["question_type"].append(qt)
        rows["answer_type"].append(info["answer_type"])
        rows["grade"].append(example["grade"])
        rows["laterality"].append(example["laterality"])
        rows["quality"].append(example["quality"])
        rows["lesions"].append(example["lesions"])
        if "patient_id" in example:
            rows["patient_id"].append(example["patient_id"])
        if "conditions" in example:
            rows["conditions"].append(example["conditions"])
    return rows


def _condition_answer(example: Mapping[str, Any], qt: str, seed: int, split: str, index: int, image_size: int) -> str:
    """The answer of a multi-disease row: the DR questions see every condition, the others read the stages."""
    meta = example["conditions"]
    grade = example["grade"]
    stages = {c: meta[c] for c in OTHER_CONDITIONS}
    if qt == "abnormality":
        return "yes" if meta["diseases"] else "no"
    if qt in QUESTION_TYPES:
        return answer_for(qt, grade, example["laterality"], example["quality"], example["lesions"], image_size)
    if qt == REPORT_QUESTION_TYPE:
        # A generator of its own: the wording does not depend on which other questions the rows ask.
        return write_report(
            _image_rng(seed, split, index, _STREAM_REPORT),
            grade,
            meta["findings"],
            stages,
            example["enabled"],
            meta["cup_to_disc"],
            meta["rvo_quadrant"],
        )
    return condition_answer_for(
        qt, grade, example["laterality"], example["lesions"], image_size, stages, meta["cup_to_disc"]
    )


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
    conditions: Sequence[str] | str | None = None,
    prevalence: Mapping[str, float] | str | None = None,
    quality_defects: Sequence[str] | str | None = None,
    eyes_per_patient: int = 1,
    camera: str = DEFAULT_CAMERA,
) -> datasets.DatasetDict:
    """Generate train/validation/test splits with one row per (image, question type).

    Images are split-disjoint; every image and every paraphrase choice is determined by
    (seed, split, image index) alone, so the same arguments always give the same dataset.
    ``conditions`` ("dr", the default, "all", or a list of ``conditions.CONDITIONS``) adds the other
    conditions, each present with its ``prevalence`` (``conditions.DEFAULT_PREVALENCE`` for those not given);
    the default question types then become ``condition_question_types(conditions)``. ``quality_defects`` (a list
    or comma-separated string of ``render.QUALITY_DEFECTS``) are the kinds a defective image (``quality_defect_rate``
    of them) draws from; the default, blurred, underexposed and overexposed, gives the images of before.
    ``eyes_per_patient=2`` makes images 2k and 2k+1 of each split one patient's two eyes (opposite laterality, the
    same ``patient_id``, DR grades drawn by ``fellow_eye_kernel``; other conditions drawn per eye, independently);
    every split then needs an even number of images. ``camera`` (a name of `camera.CAMERAS`) photographs every image
    through that camera or site profile (the eyes and rows stay those of the default camera; images may be JPEG).
    """
    import datasets

    counts = {
        "num_train_images": num_train_images,
        "num_validation_images": num_validation_images,
        "num_test_images": num_test_images,
    }
    enabled = parse_conditions(conditions)
    prevalence_of = parse_prevalence(prevalence, enabled)
    defects = parse_quality_defects(quality_defects)
    camera = parse_camera(camera)
    _validate_args(counts, image_size, quality_defect_rate, question_types, enabled, eyes_per_patient)
    weights = validate_grade_weights(grade_weights)
    qtypes = list(question_types) if question_types is not None else condition_question_types(enabled)
    workers = _default_workers() if num_workers is None else max(1, int(num_workers))
    # DR only and DR questions only: the rows and columns of before, drawn exactly as before.
    multidisease = enabled != ("dr",) or any(q in CONDITION_QUESTION_TYPES for q in qtypes)
    features = dataset_features(multidisease, patients=eyes_per_patient == 2)
    spec = (enabled, tuple(sorted(prevalence_of.items())), None) if multidisease else None

    tasks: dict[str, list[tuple]] = {}
    for split, n in zip(SPLITS, counts.values(), strict=True):
        grade_rng = np.random.default_rng([seed, SPLITS.index(split), 2**31])
        if eyes_per_patient == 2:
            grades, eyes = _split_patients(split, int(n), weights, seed, grade_rng)
        else:
            grades = _split_grades(int(n), weights, grade_rng)
        tasks[split] = [(seed, split, i, g, image_size, quality_defect_rate) for i, g in enumerate(grades)]
        if eyes_per_patient == 2:
            tasks[split] = [(*t, spec, defects, eye) for t, eye in zip(tasks[split], eyes, strict=True)]
            continue
        if spec is not None or defects != DEFAULT_QUALITY_DEFECTS:
            tasks[split] = [(*t, spec) for t in tasks[split]]
        if defects != DEFAULT_QUALITY_DEFECTS:  # only then, so that the default tasks are those of before
            tasks[split] = [(*t, defects) for t in tasks[split]]
        tasks[split] = [with_camera(t, camera) for t in tasks[split]]
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
    if multidisease:
        # Only here, so that DR-only datasets keep their cache keys.
        params.append([list(enabled), sorted(prevalence_of.items())])
    if defects != DEFAULT_QUALITY_DEFECTS:
        # Likewise: the default defect kinds keep their cache keys.
        params.append(["quality_defects", list(defects)])
    if eyes_per_patient == 2:
        # Likewise: independent images keep their cache keys.
        params.append(["eyes_per_patient", 2])
    if camera != DEFAULT_CAMERA:
        # Likewise: the default camera keeps its cache keys.
        params.append(["camera", camera])
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
        [pa.array([e["image_bytes"] for e in examples], pa.binary()), pa.nulls(len(examples), pa.string())],
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
