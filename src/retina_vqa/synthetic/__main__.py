"""Command line of the synthetic RetinaVQA generator.

This module owns the CLI (``build_parser`` and ``main``)::

    python -m retina_vqa.synthetic --output_dir data/retinavqa-synthetic
    python -m retina_vqa.synthetic --preview preview.png --image_size 384
    python -m retina_vqa.synthetic --output_dir data/retinavqa-multidisease --conditions all
    python -m retina_vqa.synthetic --preview preview.png --conditions all --image_size 128
    python -m retina_vqa.synthetic --output_dir data/retinavqa-handheld --camera handheld

Errors in the arguments (bad numbers, an occupied ``--output_dir``) exit with status 2 and a message
naming the flag, before any image is drawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..questions import CONDITION_QUESTION_TYPES, QUESTION_TYPES
from .build import EYES_PER_PATIENT, generate_dataset, parse_quality_defects, validate_grade_weights
from .camera import CAMERAS, DEFAULT_CAMERA, parse_camera
from .conditions import CONDITIONS, DEFAULT_PREVALENCE, parse_conditions, parse_prevalence
from .export import FORMATS, LAYOUTS, check_output_dir, parse_dataset_command, render_preview, save_dataset
from .render import DEFAULT_QUALITY_DEFECTS, QUALITY_DEFECTS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m retina_vqa.synthetic``."""
    p = argparse.ArgumentParser(
        prog="python -m retina_vqa.synthetic",
        description="Generate a synthetic retinal fundus VQA dataset, or a preview grid of its images.",
    )
    p.add_argument("--output_dir", help="where to write the dataset (required unless --preview)")
    p.add_argument("--preview", metavar="PNG", help="write a 4x4 grid of samples to this PNG and exit")
    p.add_argument("--num_train_images", type=int, default=600)
    p.add_argument("--num_validation_images", type=int, default=100)
    p.add_argument("--num_test_images", type=int, default=100)
    p.add_argument("--image_size", type=int, default=384, help="side of the square images in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="save_to_disk", help="save_to_disk (default) or imagefolder")
    p.add_argument(
        "--layout",
        default="image_rows",
        choices=LAYOUTS,
        help="save_to_disk rows: image_rows (default: each image stored once, its questions as lists) or "
        "question_rows (the RetinaVQA format: one row and one image copy per question)",
    )
    p.add_argument("--grade_weights", default="1,1,1,1,1", help="relative frequency of ICDR grades 0-4")
    p.add_argument("--paraphrase", action="store_true", help="vary the question wording per row")
    p.add_argument(
        "--quality_defect_rate",
        type=float,
        default=0.1,
        help="fraction of images with a photographic defect (ungradable: the quality answer is no)",
    )
    p.add_argument(
        "--quality_defects",
        default=",".join(DEFAULT_QUALITY_DEFECTS),
        help=f"comma-separated defect kinds those images draw from, of {','.join(QUALITY_DEFECTS)} (default "
        f"{','.join(DEFAULT_QUALITY_DEFECTS)}: the images of before; small_pupil and eyelashes are opt in)",
    )
    p.add_argument(
        "--question_types",
        default=None,
        help=f"comma-separated subset of question types (default all: {','.join(QUESTION_TYPES)}; with other "
        f"conditions also {','.join(CONDITION_QUESTION_TYPES)} for the conditions drawn, without blindness,cause)",
    )
    p.add_argument(
        "--conditions",
        default="dr",
        help=f"conditions to draw: dr (default, the DR-only dataset), all, or a comma list of {','.join(CONDITIONS)}"
        "; dr is always drawn, its grades follow --grade_weights",
    )
    p.add_argument(
        "--prevalence",
        default=None,
        help="share of images with each other condition, e.g. glaucoma=0.2,amd=0.4 (default "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_PREVALENCE.items())
        + "); conditions are drawn independently, so they co-occur",
    )
    p.add_argument(
        "--eyes_per_patient",
        type=int,
        default=1,
        choices=EYES_PER_PATIENT,
        help="1 (default): independent images; 2: images come in pairs, one patient's right and left eye, with a "
        "patient_id column and DR grades that mostly agree between the eyes (every split needs an even image count)",
    )
    p.add_argument(
        "--camera",
        default=DEFAULT_CAMERA,
        help=f"camera or site profile the images are photographed with, one of {', '.join(CAMERAS)} (default "
        f"{DEFAULT_CAMERA}: the images of before; the others change colour cast, fall-off, field and mask, "
        "resolution and blur, and store JPEG; the eyes and answers stay those of the default camera)",
    )
    p.add_argument("--num_workers", type=int, default=None, help="rendering processes (default up to 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return p


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: the dataset, or with ``--preview`` only the grid; bad flags exit with status 2."""
    parser = build_parser()
    args, command = parse_dataset_command(parser, argv)
    try:
        conditions = parse_conditions(args.conditions)
        parse_prevalence(args.prevalence, conditions)  # a bad --prevalence fails before any drawing
        quality_defects = parse_quality_defects(args.quality_defects)
        camera = parse_camera(args.camera)
        if args.preview:
            grid = render_preview(
                args.image_size, args.seed, args.quality_defect_rate, conditions, quality_defects, camera
            )
            Path(args.preview).parent.mkdir(parents=True, exist_ok=True)
            grid.save(args.preview)
            print(f"wrote preview {args.preview} ({grid.width}x{grid.height})")
            return
        if not args.output_dir:
            parser.error("--output_dir is required (or use --preview FILE.png)")
        if args.format not in FORMATS:
            parser.error(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
        question_types = args.question_types.split(",") if args.question_types else None
        check_output_dir(Path(args.output_dir), args.overwrite)
        dd = generate_dataset(
            args.num_train_images,
            args.num_validation_images,
            args.num_test_images,
            image_size=args.image_size,
            seed=args.seed,
            grade_weights=validate_grade_weights(args.grade_weights),
            paraphrase=args.paraphrase,
            quality_defect_rate=args.quality_defect_rate,
            question_types=question_types,
            num_workers=args.num_workers,
            conditions=conditions,
            prevalence=args.prevalence,
            quality_defects=quality_defects,
            eyes_per_patient=args.eyes_per_patient,
            camera=camera,
        )
        save_dataset(
            dd, args.output_dir, args.format, overwrite=args.overwrite, command=command, layout=args.layout,
            camera=camera,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    summary = ", ".join(f"{s}: {dd[s].num_rows} rows" for s in dd)
    print(f"wrote {args.output_dir} ({summary})")


if __name__ == "__main__":
    main()
