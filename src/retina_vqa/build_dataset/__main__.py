"""Command line of the dataset builder: ``python -m retina_vqa.build_dataset --help`` is its manual.

This module owns the argument parser (`build_parser`) and `main`. Bad options exit with status 2 and a
message naming the flag; bad input (missing, unlabelled or unreadable images, unknown grades, a header that
does not fit the source, a patients file that does not fit the labels) exits with status 1 and one report of
every problem; neither writes anything.
"""

from __future__ import annotations

import argparse
import sys

from ..questions import LABEL_QUESTION_TYPES
from ..synthetic.export import parse_dataset_command
from .build import BuildOptions, build_dataset
from .records import InputError
from .sources import SOURCES

_EPILOG = """\
label files and images, as the publishers ship them:
  aptos      --labels train.csv --images train_images
  eyepacs    --labels trainLabels.csv --images train
  idrid      --labels "a. IDRiD_Disease Grading_Training Labels.csv" "b. IDRiD_Disease Grading_Testing Labels.csv"
             --images "a. Training Set" "b. Testing Set"      (source split kept)
  messidor2  --labels messidor_data.csv --images IMAGES [--messidor2_pairs messidor-2.csv]
  ddr        --labels DR_grading/train.txt DR_grading/valid.txt DR_grading/test.txt
             --images DR_grading/train DR_grading/valid DR_grading/test   (source split kept)
  csv        --labels my.csv --images my_images --image_column file --grade_column grade [--patient_column id]

Splits: the source's own where it has one (DDR, IDRiD); otherwise stratified by grade and grouped by patient,
deterministic per --seed. Patients: EyePACS names (10_left/10_right), --patient_column (csv), Messidor-2's
examination pairs (--messidor2_pairs), or for any source --patients FILE, a CSV with the header
'image,patient_id' (it replaces what the source says). APTOS, IDRiD, DDR and Messidor-2 name no patients:
without a patients file their split is grouped by image (a warning, and the dataset card says so), and one
person's two eyes may land in training and testing. Every image needs a patient once a file is given. The
patient_id column is written wherever patients are known. Ungradable images (DDR label 5, Messidor-2
adjudicated_gradable 0) are left out and counted in the dataset card, unless --keep_ungradable.

Bad input is reported all at once before anything is written; --skip_invalid leaves it out instead and counts
it in the dataset card. The output folder appears complete or not at all (the build writes to a hidden
.NAME.partial folder next to it and renames it at the end); after an interruption run the same command again.
Disk: each image is stored once (image rows: one row per image, its questions as lists; run_vqa.py and the
other commands read them as one row per question), so the output is about images x stored image size plus
~0.2 KB of text per question: ~0.1-0.2 MB per image at --max_image_side 1024, whatever the number of question
types. EyePACS (88,702 images, 1024 px JPEGs of 0.16 MB): ~14 GB, and run_vqa.py's first start-up (loading,
validating every image once, tokenising) ~4 minutes on 2 cores, later runs 7.5 s (bench/dataset_scale.py). --layout
question_rows writes the RetinaVQA format instead (one row and one image copy per question: x the 6-8 types).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m retina_vqa.build_dataset``."""
    p = argparse.ArgumentParser(
        prog="python -m retina_vqa.build_dataset",
        description="Turn a public graded fundus dataset (its label file and images, as shipped) into a RetinaVQA "
        "DatasetDict (train/validation/test, save_to_disk) that run_vqa.py --dataset_dir trains on.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=list(SOURCES), help="which dataset the label files come from")
    p.add_argument("--labels", required=True, nargs="+", metavar="FILE", help="the label file(s), as shipped")
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        metavar="DIR",
        help="the folder holding the images: one for all label files, or one per label file in the same order",
    )
    p.add_argument("--output_dir", required=True, help="where to write the dataset (save_to_disk layout + README.md)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of --paraphrase (default 0)")
    p.add_argument(
        "--validation_fraction",
        type=float,
        default=0.1,
        help="share of the images for validation where the source has no validation split (default 0.1)",
    )
    p.add_argument(
        "--test_fraction",
        type=float,
        default=0.2,
        help="share of the images for test where the source has no test split (default 0.2)",
    )
    p.add_argument(
        "--max_image_side",
        type=int,
        default=1024,
        help="downsize images to this longer side (default 1024: BLIP sees 384 px, this leaves room to crop "
        "and to train larger); large JPEGs are decoded at a reduced scale",
    )
    p.add_argument("--keep_original", action="store_true", help="store every image file as it is (no resize)")
    p.add_argument(
        "--layout",
        default="image_rows",
        choices=("image_rows", "question_rows"),
        help="image_rows (default: each image stored once, its questions as lists; disk ~ images x image size) or "
        "question_rows (the RetinaVQA format: one row and one image copy per question; disk x questions per image)",
    )
    p.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality of resized images (default 95)")
    p.add_argument(
        "--num_proc", type=int, default=1, help="processes decoding and resizing images (default 1; up to your cores)"
    )
    p.add_argument(
        "--skip_invalid",
        action="store_true",
        help="leave out bad input (missing, unlabelled or unreadable images, unknown values, duplicates) and count "
        "it in the dataset card, instead of stopping with the report",
    )
    p.add_argument(
        "--keep_ungradable",
        action="store_true",
        help="keep images the source grades ungradable (DDR, Messidor-2), with the questions they answer "
        "(modality, laterality, and 'is the image quality adequate for grading?' -> no; grade -1), and ask the "
        "quality question of every image",
    )
    p.add_argument("--paraphrase", action="store_true", help="vary the question wording per image (seeded)")
    p.add_argument(
        "--question_types",
        default=None,
        help=f"comma-separated subset of {','.join(LABEL_QUESTION_TYPES)} (default: all the labels answer)",
    )
    patient_group = p.add_argument_group("patients (keep each patient's images in one split; patient_id column)")
    patient_group.add_argument(
        "--patients",
        metavar="FILE",
        help="CSV naming each image's patient, for any source: header 'image,patient_id' (other columns ignored), "
        "one row per image; image as the label file or the images folder names it, with or without the "
        "extension, or the dataset's image_id (train/IDRiD_001 where two label files share a name). Replaces the "
        "patients the source names (EyePACS). Images it does not name, rows naming no image and images given two "
        "patients are reported (--skip_invalid: left out, ignored, first row kept)",
    )
    patient_group.add_argument(
        "--messidor2_pairs",
        metavar="FILE",
        help="--source messidor2: the examination pairs list shipped with Messidor-2, saved as CSV or text: one "
        "examination per line, its two image names (left eye, right eye) separated by a comma, semicolon, tab "
        "or spaces; a first line naming no image (left,right) is a header. Both eyes of an examination become "
        "one patient",
    )
    csv_group = p.add_argument_group("--source csv")
    csv_group.add_argument("--image_column", help="column with the image file name (extension optional)")
    csv_group.add_argument("--grade_column", help="column with the ICDR grade 0-4")
    csv_group.add_argument(
        "--patient_column", help="column naming the patient (keeps a patient's images together; or --patients FILE)"
    )
    csv_group.add_argument("--laterality_column", help="column with left/right (or L/R, OS/OD)")
    p.add_argument("--disable_tqdm", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: bad flags exit with status 2, bad input with status 1 (module docstring)."""
    parser = build_parser()
    args, command = parse_dataset_command(parser, argv)
    try:
        options = BuildOptions(
            source=args.source,
            labels=args.labels,
            images=args.images,
            output_dir=args.output_dir,
            seed=args.seed,
            validation_fraction=args.validation_fraction,
            test_fraction=args.test_fraction,
            max_image_side=args.max_image_side,
            keep_original=args.keep_original,
            layout=args.layout,
            jpeg_quality=args.jpeg_quality,
            num_proc=args.num_proc,
            skip_invalid=args.skip_invalid,
            keep_ungradable=args.keep_ungradable,
            paraphrase=args.paraphrase,
            question_types=args.question_types.split(",") if args.question_types else None,
            overwrite=args.overwrite,
            image_column=args.image_column,
            grade_column=args.grade_column,
            patient_column=args.patient_column,
            laterality_column=args.laterality_column,
            patients=args.patients,
            messidor2_pairs=args.messidor2_pairs,
            progress=not args.disable_tqdm,
            command=command,
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        result = build_dataset(options)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except ValueError as error:
        parser.error(str(error))
    summary = ", ".join(f"{s}: {st.images} images, {st.rows} rows" for s, st in result.stats.items())
    left_out = ", ".join(f"{k} {v}" for k, v in result.dropped.items() if v) or "nothing"
    print(f"wrote {options.output_dir} ({summary}); left out: {left_out}")
    print(f"{result.seconds:.1f} s in all, images written at {result.images_per_second:.1f} images/s")


if __name__ == "__main__":
    main()
