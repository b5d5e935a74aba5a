"""From label files and image folders to a RetinaVQA dataset on disk, in numbered phases.

This module owns `BuildOptions` (every setting, checked with the flag named in each error) and
`build_dataset`, which runs the phases: 1. check the options and the output folder; 2. read the labels
(`sources`); 3. match them to image files, give each its patient from ``--patients`` or
``--messidor2_pairs`` (`patients`) and check every image (`checks`); 4. stop with one report of every
problem, or drop and count them with ``skip_invalid``; 5. leave out ungradable images (counted); 6. split
(`splits`); 7. write into a temporary folder (`writer`) with a dataset card (`card`); 8. move it into
place. Nothing appears at ``output_dir`` unless every phase succeeded.
"""

from __future__ import annotations

import collections
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..questions import LABEL_QUESTION_TYPES
from .card import write_card
from .checks import check_images, find_images
from .patients import assign_patients, read_messidor2_pairs, read_patients
from .records import InputError, InputReport, LabelRecord
from .sources import SOURCES, CsvColumns, read_labels
from .splits import assign_splits, check_fractions
from .writer import SplitStats, WriteSettings, check_output_dir, partial_dir, publish, write_splits

__all__ = ["BuildOptions", "BuildResult", "build_dataset"]

logger = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    """The builder's settings; the command line (``__main__``) maps one flag to each field."""

    source: str
    labels: Sequence[Path]
    images: Sequence[Path]
    output_dir: Path
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    max_image_side: int = 1024
    keep_original: bool = False
    layout: str = "image_rows"
    jpeg_quality: int = 95
    num_proc: int = 1
    skip_invalid: bool = False
    keep_ungradable: bool = False
    paraphrase: bool = False
    question_types: Sequence[str] | None = None
    overwrite: bool = False
    image_column: str | None = None
    grade_column: str | None = None
    patient_column: str | None = None
    laterality_column: str | None = None
    patients: Path | None = None
    messidor2_pairs: Path | None = None
    progress: bool = True
    command: str = "retina_vqa.build_dataset.build_dataset(...) from Python"

    def __post_init__(self) -> None:
        self.labels = [Path(p) for p in self.labels]
        self.images = [Path(p) for p in self.images]
        self.output_dir = Path(self.output_dir)
        if self.source not in SOURCES:
            raise ValueError(f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not self.labels:
            raise ValueError(f"--labels needs at least one label file ({SOURCES[self.source].shipped_as})")
        if len(self.images) not in (1, len(self.labels)):
            raise ValueError(
                f"--images needs one folder for all --labels files or one per file, in the same order; got "
                f"{len(self.images)} folder(s) for {len(self.labels)} file(s)"
            )
        check_fractions(self.validation_fraction, self.test_fraction)
        if self.max_image_side < 16:
            raise ValueError(f"--max_image_side must be at least 16 (one ViT patch), got {self.max_image_side}")
        if self.layout not in ("image_rows", "question_rows"):
            raise ValueError(f"--layout must be image_rows or question_rows, got {self.layout!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg_quality must be between 1 and 100, got {self.jpeg_quality}")
        if self.num_proc < 1:
            raise ValueError(f"--num_proc must be at least 1, got {self.num_proc}")
        csv_flags = {
            "--image_column": self.image_column,
            "--grade_column": self.grade_column,
            "--patient_column": self.patient_column,
            "--laterality_column": self.laterality_column,
        }
        if self.source == "csv":
            if not (self.image_column and self.grade_column):
                raise ValueError("--source csv needs --image_column and --grade_column (the columns of your CSV)")
        elif any(csv_flags.values()):
            given = ", ".join(flag for flag, value in csv_flags.items() if value)
            raise ValueError(f"{given} only apply to --source csv; --source {self.source} knows its own columns")
        self.patients = Path(self.patients) if self.patients is not None else None
        self.messidor2_pairs = Path(self.messidor2_pairs) if self.messidor2_pairs is not None else None
        if self.messidor2_pairs is not None and self.source != "messidor2":
            raise ValueError(
                f"--messidor2_pairs only applies to --source messidor2; name the patients of --source {self.source} "
                "with --patients FILE (columns image,patient_id)"
            )
        patient_flags = {
            "--patients": self.patients,
            "--messidor2_pairs": self.messidor2_pairs,
            "--patient_column": self.patient_column,
        }
        if sum(value is not None for value in patient_flags.values()) > 1:
            given = ", ".join(flag for flag, value in patient_flags.items() if value is not None)
            raise ValueError(f"{given} each name the patients: give one of them")
        if self.question_types is not None:
            unknown = [t for t in self.question_types if t not in LABEL_QUESTION_TYPES]
            if unknown or not self.question_types:
                raise ValueError(
                    f"--question_types has unknown or no types {unknown}; choose from {', '.join(LABEL_QUESTION_TYPES)}"
                )
            if "quality" in self.question_types and not self.keep_ungradable:
                raise ValueError(
                    "--question_types quality needs --keep_ungradable: without ungradable images every answer "
                    "would be 'yes'"
                )

    def csv_columns(self) -> CsvColumns | None:
        if self.source != "csv":
            return None
        return CsvColumns(self.image_column, self.grade_column, self.patient_column, self.laterality_column)

    def patients_file(self) -> Path | None:
        """The file that names the patients (``--patients`` or ``--messidor2_pairs``), if one is given."""
        return self.patients or self.messidor2_pairs

    def patients_note(self) -> str:
        """Where the patients come from, for the dataset card."""
        if self.patients is not None:
            return f"patients: from `--patients {self.patients}`"
        if self.messidor2_pairs is not None:
            return (
                f"patients: the examination pairs of `--messidor2_pairs {self.messidor2_pairs}` (the two eyes of one "
                "examination are one patient)"
            )
        if self.patient_column:
            return f"patients: the label file's `{self.patient_column}` column"
        return f"patients: {SOURCES[self.source].patients}"


@dataclass
class BuildResult:
    """What a build wrote: the output folder, per-split counts, what was left out, and how long it took."""

    output_dir: Path
    stats: dict[str, SplitStats]
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_second: float = 0.0


def _dataset_question_types(options: BuildOptions, records: Sequence[LabelRecord]) -> tuple[str, ...]:
    """The question types of this dataset: what the labels answer, narrowed by --question_types."""
    wanted = options.question_types or LABEL_QUESTION_TYPES
    available = []
    for question_type in LABEL_QUESTION_TYPES:
        if question_type == "laterality" and not any(r.laterality for r in records):
            continue
        if question_type == "macular_oedema" and not any(r.macular_oedema for r in records):
            continue
        # Asked only when ungradable images are kept: among gradable images alone every answer is "yes".
        if question_type == "quality" and not (options.keep_ungradable and SOURCES[options.source].grades_gradability):
            continue
        if question_type in wanted:
            available.append(question_type)
    missing = [t for t in wanted if t not in available]
    if options.question_types and missing:
        raise ValueError(
            f"--question_types {', '.join(missing)}: the labels of --source {options.source} do not answer these"
        )
    return tuple(available)


def build_dataset(options: BuildOptions) -> BuildResult:
    """Build the dataset ``options`` describe (see the module docstring). Raises `InputError` with the report
    of every problem in the input, or ``ValueError`` for bad options; then nothing is written."""
    start = time.perf_counter()
    # 1. The output folder first: a bad path fails in a second, not after an hour of images.
    patients_file = options.patients_file()
    inputs = [*options.labels, *options.images, *([patients_file] if patients_file else [])]
    check_output_dir(options.output_dir, options.overwrite, inputs)
    if options.keep_ungradable and not SOURCES[options.source].grades_gradability:
        logger.warning("--source %s marks no image ungradable; --keep_ungradable changes nothing", options.source)

    # 2. Labels.
    records, problems = read_labels(options.source, options.labels, options.images, options.csv_columns())
    logger.info("Read %d labelled images from %d label file(s)", len(records), len(options.labels))

    # 3. Files, patients and images.
    problems += find_images(records, bad_rows=problems)
    found = [r for r in records if r.path is not None]

    def held(record: LabelRecord) -> bool:  # an image the dataset holds if its input is good (phase 5)
        return record.gradable or options.keep_ungradable

    if patients_file is not None:
        read = read_patients if options.patients is not None else read_messidor2_pairs
        patient_rows, patient_problems = read(patients_file)
        # Every image the dataset will hold needs a patient; ungradable ones only if they are kept.
        needed = [r for r in found if held(r)]
        rejected = [p.image for p in problems if p.image]
        patient_problems += assign_patients(records, patient_rows, needed, patients_file, rejected)
        problems += patient_problems
        logger.info("Read the patients of %d images from %s", sum(bool(r.patient_id) for r in found), patients_file)
    problems += check_images(found, options.num_proc, options.progress)

    # 4. One report of everything, or drop and count.
    report = InputReport(list(problems))
    if report.problems and not options.skip_invalid:
        raise InputError(
            f"{report.format()}\nNothing was written to {options.output_dir}. Fix the input, or pass --skip_invalid "
            "to leave these out (they are counted in the dataset card).",
            report,
        )
    bad_paths = {p.where for p in report.problems if p.kind == "unreadable_image"}
    usable = [r for r in found if r.path not in bad_paths]
    if patients_file is not None:  # images the patients file gives no patient (each reported above)
        usable = [r for r in usable if r.patient_id or not held(r)]
    dropped: dict[str, int] = dict(report.counts())
    if report.problems:
        logger.warning("Leaving out (--skip_invalid): %s", ", ".join(f"{k} {v}" for k, v in dropped.items()))

    # 5. Ungradable images.
    ungradable = sum(1 for r in usable if r.grade is None)
    if not options.keep_ungradable:
        usable = [r for r in usable if r.grade is not None]
        dropped = {"ungradable": ungradable, **dropped}
    if not usable:
        raise InputError(f"no usable images are left ({dropped}); nothing was written to {options.output_dir}")

    # 6. Splits.
    splits, split_notes = assign_splits(usable, options.seed, options.validation_fraction, options.test_fraction)
    if any(r.patient_id for r in usable):
        split_notes.insert(0, options.patients_note())
    for split, members in splits.items():
        if not members:
            logger.warning("Split %s is empty: too few images (or patients) for the split fractions", split)

    # 7. Write into the working folder, then 8. move it into place.
    settings = WriteSettings(
        question_types=_dataset_question_types(options, usable),
        seed=options.seed,
        paraphrase=options.paraphrase,
        with_laterality=any(r.laterality for r in usable),
        with_patient=any(r.patient_id for r in usable),
        max_image_side=options.max_image_side,
        keep_original=options.keep_original,
        jpeg_quality=options.jpeg_quality,
        image_rows=options.layout == "image_rows",
    )
    work_dir = partial_dir(options.output_dir)
    try:
        write_start = time.perf_counter()
        dataset_dir, stats, decode_problems = write_splits(
            splits, work_dir, settings, options.num_proc, options.progress
        )
        write_seconds = time.perf_counter() - write_start
        if decode_problems:
            late = InputReport(decode_problems)
            if not options.skip_invalid:
                raise InputError(
                    f"{late.format()}\nThese images passed the up-front check but failed to decode while writing. "
                    f"Nothing was written to {options.output_dir}. Fix them, or pass --skip_invalid.",
                    late,
                )
            for kind, count in late.counts().items():
                dropped[kind] = dropped.get(kind, 0) + count
        without_questions = sum(split_stats.without_questions for split_stats in stats.values())
        if without_questions:
            dropped["no_questions"] = without_questions
            logger.warning("%d images answer none of the asked question types: left out", without_questions)
        write_card(
            dataset_dir,
            source=options.source,
            label_files=options.labels,
            images_dirs=options.images,
            command=options.command,
            stats=stats,
            split_notes=split_notes,
            dropped=collections.Counter(dropped),
            settings=settings,
            output_dir=options.output_dir,
        )
        publish(dataset_dir, options.output_dir, options.overwrite)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    images = sum(s.images for s in stats.values())
    return BuildResult(options.output_dir, stats, dropped, seconds, images / write_seconds if write_seconds else 0.0)
