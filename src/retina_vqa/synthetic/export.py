"""Writing the synthetic dataset to disk, its dataset card and the preview grid.

This module owns what leaves memory: ``save_dataset`` (``save_to_disk`` or ``imagefolder``), the
output-directory checks that keep ``--overwrite`` from deleting the wrong folder, the README.md dataset
card with per-split counts (per-condition stages when other conditions are drawn, patients and the agreement of
their two eyes when pairs are drawn), and ``render_preview``
(a captioned grid of images for eyeballing the drawing: the DR grades, or each condition at two or more
stages). ``parse_dataset_command`` starts the command lines that write a dataset (logging, arguments, and the
command the card quotes).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from ..data.layout import to_image_rows
from ..questions import DIAGNOSIS_ANSWERS, QUESTION_TYPES
from .build import FELLOW_EYE_AGREEMENT, render_example, with_camera
from .camera import CAMERAS, DEFAULT_CAMERA, parse_camera
from .conditions import CUP_TO_DISC, OTHER_CONDITIONS, ConditionState, parse_conditions
from .render import DEFAULT_QUALITY_DEFECTS, MIN_IMAGE_SIZE, QUALITIES, QUALITY_DEFECTS

if TYPE_CHECKING:
    import argparse

    import datasets

__all__ = [
    "FORMATS",
    "markdown_table",
    "short_text",
    "check_output_dir",
    "parse_dataset_command",
    "preview_label_height",
    "render_preview",
    "save_dataset",
    "write_dataset_card",
]

logger = logging.getLogger(__name__)

FORMATS = ("save_to_disk", "imagefolder")
# How save_to_disk stores the rows (data.layout): each image once, or one image copy per question.
LAYOUTS = ("image_rows", "question_rows")
PREVIEW_GRID = 4


# --------------------------------------------------------------------------------------------------
# Saving and dataset card
# --------------------------------------------------------------------------------------------------


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Raise ``ValueError`` unless ``output_dir`` may be written: absent, empty, or replaceable with ``overwrite``.

    Called before rendering as well as in ``save_dataset``, so that a bad path fails in seconds, not after
    the images are drawn.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; pass a directory path")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace it "
                "or choose another directory"
            )
        resolved = output_dir.resolve()
        protected = {
            Path("/").resolve(),
            Path.home().resolve(),
            Path.cwd().resolve(),
            *Path.cwd().resolve().parents,
        }
        if resolved in protected:
            raise ValueError(f"--output_dir {output_dir} is the working, home or root directory; refusing to delete it")


def save_dataset(
    dataset_dict: datasets.DatasetDict,
    output_dir: str | os.PathLike,
    format: str = "save_to_disk",
    overwrite: bool = False,
    command: str | None = None,
    layout: str = "image_rows",
    camera: str = DEFAULT_CAMERA,
) -> Path:
    """Write ``dataset_dict`` (question rows, as `generate_dataset` makes them) to ``output_dir`` as
    ``save_to_disk`` or ``imagefolder``, plus README.md. ``save_to_disk`` stores image rows (`data.layout`: each
    image once, its questions as lists) unless ``layout`` is ``"question_rows"`` (the RetinaVQA format, one image
    copy per question); imagefolder writes one file per image either way. ``camera``: the camera profile the images
    were generated with (`generate_dataset(camera=...)`), which the card names."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    out = Path(output_dir)
    check_output_dir(out, overwrite)
    if out.is_dir():
        shutil.rmtree(out)
    if format == "save_to_disk":
        import datasets

        stored = dataset_dict
        if layout == "image_rows":
            stored = datasets.DatasetDict({split: to_image_rows(ds) for split, ds in dataset_dict.items()})
        # An empty split would otherwise be written with zero shards, which load_from_disk cannot read.
        empty = {split: 1 for split, ds in stored.items() if ds.num_rows == 0}
        stored.save_to_disk(str(out), num_shards=empty or None)
    else:
        _save_imagefolder(dataset_dict, out)
    write_dataset_card(dataset_dict, out, format, command, layout, camera=camera)
    logger.info("Wrote %s dataset to %s", format, out)
    return out


def _save_imagefolder(dataset_dict: datasets.DatasetDict, out: Path) -> None:
    import datasets

    for split, ds in dataset_dict.items():
        if ds.num_rows == 0:
            # An empty split folder would make the imagefolder loader fail; leave it out.
            logger.warning("Split %s is empty; not writing it in imagefolder format", split)
            continue
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        raw = ds.cast_column("image", datasets.Image(decode=False))
        meta_columns = [c for c in ds.column_names if c != "image"]
        written: set[str] = set()
        with open(split_dir / "metadata.jsonl", "w", encoding="utf-8") as f:
            for row in raw:
                # A camera that stores JPEG (synthetic.camera) gets .jpg files; the default camera's are PNG.
                suffix = ".jpg" if row["image"]["bytes"][:3] == b"\xff\xd8\xff" else ".png"
                file_name = f"{row['image_id']}{suffix}"
                if row["image_id"] not in written:
                    # One file per image, shared by all of its question rows.
                    (split_dir / file_name).write_bytes(row["image"]["bytes"])
                    written.add(row["image_id"])
                record = {"file_name": file_name, **{c: row[c] for c in meta_columns}}
                f.write(json.dumps(record) + "\n")


def parse_dataset_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, str]:
    """The start of a command that writes a dataset (this package's and `retina_vqa.build_dataset`'s): INFO logging
    with timestamps, then ``argv`` (default: the process's arguments) parsed by ``parser``. Returns the arguments
    and the command line as the dataset card quotes it: ``parser``'s program, then ``argv`` shell-quoted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    return parser.parse_args(argv), parser.prog + " " + shlex.join(argv)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (the dataset cards of the synthetic set and of `retina_vqa.build_dataset`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def short_text(text: str, limit: int = 60) -> str:
    """`text`, cut to `limit` characters with an ellipsis (for dataset-card tables)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_dataset_card(
    dataset_dict: datasets.DatasetDict,
    output_dir: str | os.PathLike,
    format: str = "save_to_disk",
    command: str | None = None,
    layout: str = "image_rows",
    camera: str = DEFAULT_CAMERA,
) -> Path:
    """Write README.md with per-split counts of images, rows, question types, answers and grades; ``layout`` is how
    `save_dataset` stored the rows (``save_to_disk`` only); ``camera`` the camera profile of the images, named in a
    section of its own when it is not the default."""
    splits = list(dataset_dict)
    meta = {
        s: dataset_dict[s].select_columns(["image_id", "question_type", "answer", "grade", "quality"]).to_dict()
        for s in splits
    }

    def per_split(key: str, by_image: bool = False) -> dict[str, collections.Counter]:
        result = {}
        for s in splits:
            if by_image:
                seen = dict(zip(meta[s]["image_id"], meta[s][key], strict=True))
                result[s] = collections.Counter(seen.values())
            else:
                result[s] = collections.Counter(meta[s][key])
        return result

    def table(counters: dict[str, collections.Counter], keys: Iterable, label: str, fmt=str) -> str:
        return markdown_table([label, *splits], [[fmt(k), *(counters[s].get(k, 0) for s in splits)] for k in keys])

    images = {s: len(set(meta[s]["image_id"])) for s in splits}
    qt_counts = per_split("question_type")
    grade_counts = per_split("grade", by_image=True)
    quality_counts = per_split("quality", by_image=True)
    # The qualities of before always; the opt-in defect kinds where drawn (the default card stays as it was).
    quality_rows = [q for q in ("good", *QUALITY_DEFECTS) if q in QUALITIES or _drawn(quality_counts, q)]
    answer_counts: dict[str, collections.Counter] = {}
    pairs: list[tuple[str, str]] = []
    for s in splits:
        answer_counts[s] = collections.Counter(zip(meta[s]["question_type"], meta[s]["answer"], strict=True))
        pairs.extend(answer_counts[s])
    pairs = sorted(
        dict.fromkeys(pairs),
        key=lambda p: (list(QUESTION_TYPES).index(p[0]) if p[0] in QUESTION_TYPES else 99, p[1]),
    )
    answer_table = markdown_table(
        ["question type", "answer", *splits],
        [[qt, short_text(a), *(answer_counts[s].get((qt, a), 0) for s in splits)] for qt, a in pairs],
    )
    load = (
        f'datasets.load_from_disk("{output_dir}")'
        if format == "save_to_disk"
        else f'datasets.load_dataset("imagefolder", data_dir="{output_dir}")'
    )
    rows = "Each image gives one row per question type."
    if format == "save_to_disk" and layout == "image_rows":
        load = f'retina_vqa.data.loading.load_dataset_dir("{output_dir}")` (one row per question) or `{load}'
        rows = (
            "Each image is stored once, in one row whose `question`, `answer`, `question_type` and `answer_type` are "
            "lists, one item per question (`--layout image_rows`); read as one row per question type."
        )
    card = f"""# retinavqa-synthetic

Synthetic colour fundus photographs with diabetic retinopathy lesions (ICDR grades 0-4) and
question/answer pairs, in the same format as the private retinal VQA dataset. No patient data: every
image is drawn procedurally.

Produced by:

```
{command or "retina_vqa.synthetic.generate_dataset(...) from Python"}
```

Load with `{load}`.

{rows} Columns: `image`, `question`, `answer`, `image_id`,
`question_type`, `answer_type` (closed/open), `grade` (0-4), `laterality`, `quality`, `lesions`
(boxes with `type`, `x0`, `y0`, `x1`, `y1` in pixels). Haemorrhage quadrants are split by the
vertical and horizontal lines through the image centre.

## Size

{markdown_table(["split", "images", "rows"], [[s, images[s], dataset_dict[s].num_rows] for s in splits])}

## Images per grade

{table(grade_counts, range(5), "grade", lambda g: f"{g} ({DIAGNOSIS_ANSWERS[g]})")}

## Images per quality

{table(quality_counts, quality_rows, "quality")}

## Rows per question type

{table(qt_counts, [q for q in QUESTION_TYPES if any(qt_counts[s].get(q) for s in splits)], "question type")}

## Rows per answer

{answer_table}
{_patients_section(dataset_dict)}{_conditions_section(dataset_dict)}{_camera_section(camera)}"""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card, encoding="utf-8")
    return path


def _patients_section(dataset_dict: datasets.DatasetDict) -> str:
    """Patients per split and how often their two eyes share the DR grade (``--eyes_per_patient 2`` only)."""
    splits = [s for s in dataset_dict if "patient_id" in dataset_dict[s].column_names]
    if not splits:
        return ""
    rows = []
    for split in splits:
        meta = dataset_dict[split].select_columns(["image_id", "patient_id", "grade"]).to_dict()
        grades: dict[str, list[int]] = collections.defaultdict(list)
        by_image = dict(zip(meta["image_id"], zip(meta["patient_id"], meta["grade"], strict=True), strict=True))
        for patient, grade in by_image.values():
            grades[patient].append(grade)
        # Grade steps between a patient's eyes: 0, 1, or 2 and more.
        apart = collections.Counter(min(max(g) - min(g), 2) for g in grades.values())
        n = len(grades)
        rows.append([split, n, *(f"{apart[k]} ({apart[k] / max(n, 1):.0%})" for k in range(3))])
    table = markdown_table(["split", "patients", "same grade", "one grade apart", "two or more apart"], rows)
    return f"""
## Patients

Two images per patient (`--eyes_per_patient 2`): images 2k and 2k+1 of a split are one patient's right and left
eye, with the same `patient_id` (e.g. `train-p00000`); no patient is in two splits. The second eye's DR grade is
drawn from the first's so that about {FELLOW_EYE_AGREEMENT:.0%} of patients have the same grade in both eyes,
most others grades one step apart, and the grade mix stays that of `--grade_weights`. Other conditions are drawn
per eye, independently. Between-eye agreement of the DR grade, observed:

{table}
"""


def _camera_section(camera: str) -> str:
    """The camera profile the images were photographed with (not the default camera, whose card stays as it was)."""
    camera = parse_camera(camera)
    if camera == DEFAULT_CAMERA:
        return ""
    profile = CAMERAS[camera]
    return f"""
## Camera

Camera profile `{camera}` (`--camera {camera}`): {profile.description}. Images are stored as {profile.image_format}. The
eyes, rows and answers are those of the default camera with the same seed; only the photographs differ (a lesion
hidden by the field's edge is still answered). Settings: channel gain {profile.channel_gain}, gamma
{profile.channel_gamma}, extra fall-off {profile.vignetting}, retina scale {profile.retina_scale}, field radius
{profile.field_radius}, top/bottom clip {profile.clip_top_bottom}, notch {profile.notch}, resolution
{profile.resolution}, blur {profile.blur}, JPEG quality {profile.jpeg_quality}, per-image jitter {profile.jitter}.
"""


def _conditions_section(dataset_dict: datasets.DatasetDict) -> str:
    """Images per stage of each other condition, and how many images have two or more diseases."""
    splits = [s for s in dataset_dict if "conditions" in dataset_dict[s].column_names]
    if not splits:
        return ""
    per_split: dict[str, dict[str, collections.Counter]] = {}
    multi: dict[str, int] = {}
    for split in splits:
        meta = dataset_dict[split].select_columns(["image_id", "conditions"]).to_dict()
        by_image = dict(zip(meta["image_id"], meta["conditions"], strict=True))
        per_split[split] = {c: collections.Counter(m[c] for m in by_image.values()) for c in OTHER_CONDITIONS}
        multi[split] = sum(len(m["diseases"]) >= 2 for m in by_image.values())
    rows = [
        [condition, stage, *(per_split[s][condition].get(stage, 0) for s in splits)]
        for condition in OTHER_CONDITIONS
        for stage in sorted({k for s in splits for k in per_split[s][condition]})
    ]
    table = markdown_table(["condition", "stage", *splits], rows)
    both = ", ".join(f"{s}: {multi[s]}" for s in splits)
    return f"""
## Other conditions

Drawn beside diabetic retinopathy (the `conditions` column holds each image's stages, cup-to-disc ratio and
findings). In these datasets "is there any abnormality?" answers "yes" for any condition, "what is the
diagnosis?" stays the DR grade, and the DR-only "blindness" and "cause" questions are not asked by default.
Images with two or more diseases: {both}.

{table}
"""


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------

# Tiles of the multi-disease preview: (caption, short caption, DR grade, other conditions and their stages).
_CONDITION_TILES: tuple[tuple[str, str, int, dict[str, str]], ...] = (
    ("healthy", "healthy", 0, {}),
    ("moderate DR", "DR 2", 2, {}),
    ("proliferative DR", "DR 4", 4, {}),
    ("DR 2 + glaucoma", "DR2+G", 2, {"glaucoma": "moderate"}),
    ("glaucoma early", "G early", 0, {"glaucoma": "early"}),
    ("glaucoma advanced", "G adv", 0, {"glaucoma": "advanced"}),
    ("AMD early", "AMD 1", 0, {"amd": "early"}),
    ("AMD intermediate", "AMD 2", 0, {"amd": "intermediate"}),
    ("AMD late dry", "AMD dry", 0, {"amd": "late dry"}),
    ("AMD late wet", "AMD wet", 0, {"amd": "late wet"}),
    ("hypertensive 1", "HR 1", 0, {"hypertensive": "grade 1"}),
    ("hypertensive 2", "HR 2", 0, {"hypertensive": "grade 2"}),
    ("hypertensive 3", "HR 3", 0, {"hypertensive": "grade 3"}),
    ("hypertensive 4", "HR 4", 0, {"hypertensive": "grade 4"}),
    ("branch RVO", "BRVO", 0, {"rvo": "branch"}),
    ("central RVO", "CRVO", 0, {"rvo": "central"}),
)


def _condition_tiles(enabled: Sequence[str]) -> list[tuple[str, str, int, ConditionState]]:
    tiles = []
    for caption, short, grade, stages in _CONDITION_TILES:
        if any(c not in enabled for c in stages):
            continue
        glaucoma = stages.get("glaucoma", "none")
        state = ConditionState(
            enabled=tuple(enabled),
            # The extremes of each stage's range, so the preview shows the spread: 0.3 healthy, 0.9 advanced.
            cup_to_disc=CUP_TO_DISC[glaucoma][0 if glaucoma == "none" else -1] if "glaucoma" in enabled else None,
            rvo_quadrant="superior-temporal" if stages.get("rvo") == "branch" else None,
            **{c: stages.get(c, "none") for c in OTHER_CONDITIONS},
        )
        if state.cup_to_disc is not None:
            caption, short = f"{caption} c/d {state.cup_to_disc:.1f}", f"{short} {state.cup_to_disc:.1f}"
        tiles.append((caption, short, grade, state))
    return tiles


def preview_label_height(image_size: int) -> int:
    """Height of the caption strip under each preview tile."""
    return max(14, image_size // 14)


def render_preview(
    image_size: int = 384,
    seed: int = 0,
    quality_defect_rate: float = 0.1,
    conditions: Sequence[str] | str | None = None,
    quality_defects: Sequence[str] = DEFAULT_QUALITY_DEFECTS,
    camera: str = DEFAULT_CAMERA,
) -> Image.Image:
    """A 4x4 grid of samples cycling through the grades, each captioned with grade, eye and quality (defects drawn
    from ``quality_defects``), photographed by ``camera`` (a name of `camera.CAMERAS`).

    With ``conditions`` beyond "dr", the grid shows each enabled condition at two or more stages instead
    (good-quality images, captioned with the stages and, when glaucoma is drawn, the cup-to-disc ratio).
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    label_h = preview_label_height(image_size)
    n = PREVIEW_GRID
    enabled = parse_conditions(conditions)
    camera = parse_camera(camera)
    if enabled != ("dr",):
        return _condition_preview(image_size, seed, enabled, label_h, camera)
    grid = Image.new("RGB", (n * image_size, n * (image_size + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(9, label_h - 4))
    for i in range(n * n):
        grade = i % 5
        task = (seed, "preview", i, grade, image_size, quality_defect_rate)
        if tuple(quality_defects) != DEFAULT_QUALITY_DEFECTS:
            task += (None, tuple(quality_defects))
        ex = render_example(with_camera(task, camera))
        tile = Image.open(io.BytesIO(ex["image_bytes"]))
        x, y = (i % n) * image_size, (i // n) * (image_size + label_h)
        grid.paste(tile, (x, y))
        eye = "OD" if ex["laterality"] == "right" else "OS"
        text = f"{grade} {DIAGNOSIS_ANSWERS[grade]} {eye}"
        if ex["quality"] != "good":
            text += f" {ex['quality']}"
        if draw.textlength(text, font=font) > image_size - 4:
            # Small tiles: drop the diagnosis words, keep grade, eye and the defect.
            text = f"g{grade} {eye} {ex['quality'] if ex['quality'] != 'good' else ''}".strip()
        draw.text((x + 3, y + image_size + 1), text, fill=(0, 0, 0), font=font)
    return grid


def _condition_preview(
    image_size: int, seed: int, enabled: Sequence[str], label_h: int, camera: str = DEFAULT_CAMERA
) -> Image.Image:
    tiles = _condition_tiles(enabled)
    columns = PREVIEW_GRID
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * image_size, rows * (image_size + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(9, label_h - 4))
    for i, (caption, short, grade, state) in enumerate(tiles):
        task = (seed, "preview", i, grade, image_size, 0.0, (tuple(enabled), (), state))
        ex = render_example(with_camera(task, camera))
        tile = Image.open(io.BytesIO(ex["image_bytes"]))
        x, y = (i % columns) * image_size, (i // columns) * (image_size + label_h)
        grid.paste(tile, (x, y))
        text = caption if draw.textlength(caption, font=font) <= image_size - 4 else short
        draw.text((x + 3, y + image_size + 1), text, fill=(0, 0, 0), font=font)
    return grid


def _drawn(counts: Mapping[str, Mapping[str, int]], value: str) -> bool:
    """Whether any split of a per-split count table holds ``value`` (opt-in defect kinds are listed when drawn)."""
    return any(split_counts.get(value) for split_counts in counts.values())
