"""Label files and images in the shape each public graded fundus dataset ships them, made small.

Each ``make_*`` writes one source's layout under a folder and returns the ``--labels`` / ``--images``
arguments, with the quirks that matter: IDRiD's ``Risk of macular edema `` header with its trailing space,
extra empty columns and blank rows, and image names repeated between its training and testing sets;
DDR's headerless ``<file> <label>`` lines with label 5 for ungradable; EyePACS ``10_left`` / ``10_right``
names; Messidor-2 ``image_id`` with the extension and ungradable rows with empty grades.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


@dataclass
class Fixture:
    labels: list[Path]
    images: list[Path]
    grades: dict[str, int | None] = field(default_factory=dict)  # image id -> grade (None: ungradable)

    def options(self, source: str, output_dir: Path, **overrides):
        from retina_vqa.build_dataset import BuildOptions

        defaults = {"max_image_side": 64, "progress": False}
        return BuildOptions(
            source=source, labels=self.labels, images=self.images, output_dir=output_dir, **{**defaults, **overrides}
        )


def fundus_image(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A small dark frame with a bright disc and a few spots: looks different per seed, decodes like a photo."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(60, 220, 3))
    draw.ellipse((width * 0.1, 0, width * 0.9, height - 1), fill=colour)
    for _ in range(5):
        x, y = int(rng.integers(width * 0.2, width * 0.8)), int(rng.integers(height * 0.2, height * 0.8))
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(150, 20, 20))
    return image


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_aptos(root: Path, n: int = 10) -> Fixture:
    """train.csv (id_code, diagnosis) + train_images/{id_code}.png, two images per grade."""
    images = root / "train_images"
    images.mkdir(parents=True)
    rows, grades = [], {}
    for i in range(n):
        id_code = f"{i:04x}c1434d8d"
        fundus_image(i).save(images / f"{id_code}.png")
        rows.append([id_code, i % 5])
        grades[id_code] = i % 5
    return Fixture([write_csv(root / "train.csv", ["id_code", "diagnosis"], rows)], [images], grades)


def make_eyepacs(root: Path, patients: int = 10) -> Fixture:
    """trainLabels.csv (image, level) + train/{image}.jpeg, both eyes of each patient, eyes of different grades."""
    images = root / "train"
    images.mkdir(parents=True)
    rows, grades = [], {}
    for patient in range(1, patients + 1):
        for eye, offset in (("left", 0), ("right", 1)):
            name = f"{patient * 3}_{eye}"
            grade = (patient + offset) % 5
            fundus_image(patient * 2 + offset).save(images / f"{name}.jpeg", quality=90)
            rows.append([name, grade])
            grades[name] = grade
    return Fixture([write_csv(root / "trainLabels.csv", ["image", "level"], rows)], [images], grades)


def make_idrid(root: Path, n_train: int = 10, n_test: int = 5) -> Fixture:
    """The two disease-grading CSVs (trailing-space header, empty extra columns, blank rows) and image folders.

    Training and testing images are both numbered from IDRiD_001, as in the real set.
    """
    labels, folders, grades = [], [], {}
    for split, n, label_name, folder_name in (
        ("train", n_train, "a. IDRiD_Disease Grading_Training Labels.csv", "a. Training Set"),
        ("test", n_test, "b. IDRiD_Disease Grading_Testing Labels.csv", "b. Testing Set"),
    ):
        folder = root / "1. Original Images" / folder_name
        folder.mkdir(parents=True)
        rows = []
        for i in range(1, n + 1):
            name = f"IDRiD_{i:03d}"
            fundus_image(i + (100 if split == "test" else 0)).save(folder / f"{name}.jpg", quality=90)
            grade, dme = i % 5, i % 3
            rows.append([name, grade, dme, "", ""])
            # Names in both sets are made unique by their split; the others keep their name.
            grades[f"{split}/{name}" if i <= min(n_train, n_test) else name] = grade
        rows += [["", "", "", "", ""], ["", "", "", "", ""]]
        header = ["Image name", "Retinopathy grade", "Risk of macular edema ", "", ""]
        labels.append(write_csv(root / "2. Groundtruths" / label_name, header, rows))
        folders.append(folder)
    return Fixture(labels, folders, grades)


def make_messidor2(root: Path, n: int = 12) -> Fixture:
    """messidor_data.csv (image_id with extension; the last two rows ungradable with empty grades) + IMAGES/."""
    images = root / "IMAGES"
    images.mkdir(parents=True)
    rows, grades = [], {}
    for i in range(n):
        ungradable = i >= n - 2
        name = f"20051020_{43800 + i}_0100_PP.png" if i % 2 else f"IM{i:06d}.JPG"
        image = fundus_image(200 + i)
        if name.endswith(".png"):
            image.save(images / name)
        else:
            image.save(images / name, format="JPEG", quality=90)
        stem = name.rsplit(".", 1)[0]
        if ungradable:
            rows.append([name, "", "", 0])
            grades[stem] = None
        else:
            rows.append([name, i % 5, i % 2, 1])
            grades[stem] = i % 5
    header = ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"]
    return Fixture([write_csv(root / "messidor_data.csv", header, rows)], [images], grades)


def make_ddr(root: Path, counts: dict[str, int] | None = None) -> Fixture:
    """DR_grading/{train,valid,test}.txt ('<file.jpg> <label>', no header; one label 5 each) + image folders."""
    counts = counts or {"train": 12, "valid": 4, "test": 4}
    labels, folders, grades = [], [], {}
    for j, (split, n) in enumerate(counts.items()):
        folder = root / "DR_grading" / split
        folder.mkdir(parents=True)
        lines = []
        for i in range(n):
            name = f"00{j}-{i:04d}-000.jpg"
            fundus_image(300 + 20 * j + i).save(folder / name, quality=90)
            label = 5 if i == n - 1 else i % 5
            lines.append(f"{name} {label}\n")
            grades[name[:-4]] = None if label == 5 else label
        path = root / "DR_grading" / f"{split}.txt"
        path.write_text("".join(lines), encoding="utf-8")
        labels.append(path)
        folders.append(folder)
    return Fixture(labels, folders, grades)


def make_csv(root: Path, patients: int = 8) -> Fixture:
    """A user's own CSV: file names without extension, a patient column, OD/OS laterality."""
    images = root / "photos"
    images.mkdir(parents=True)
    rows, grades = [], {}
    for patient in range(patients):
        for eye in ("OD", "OS"):
            name = f"p{patient:02d}{eye.lower()}"
            grade = (patient * 2 + (eye == "OS")) % 5
            fundus_image(400 + patient * 2 + (eye == "OS")).save(images / f"{name}.jpg", quality=90)
            rows.append([name, grade, f"P{patient:02d}", eye])
            grades[name] = grade
    header = ["file", "dr_grade", "patient", "eye"]
    return Fixture([write_csv(root / "labels.csv", header, rows)], [images], grades)


CSV_COLUMNS = {
    "image_column": "file",
    "grade_column": "dr_grade",
    "patient_column": "patient",
    "laterality_column": "eye",
}

MAKERS = {
    "aptos": make_aptos,
    "eyepacs": make_eyepacs,
    "idrid": make_idrid,
    "messidor2": make_messidor2,
    "ddr": make_ddr,
    "csv": make_csv,
}


def label_names(fixture: Fixture) -> list[str]:
    """The image names of a CSV fixture's first label file, in row order (the first column, as written)."""
    with open(fixture.labels[0], newline="", encoding="utf-8") as f:
        return [row[0] for row in list(csv.reader(f))[1:] if row and row[0]]


def write_patients(path: Path, rows: list[list], header: tuple[str, ...] = ("image", "patient_id")) -> Path:
    """A ``--patients`` file: one ``image,patient_id`` row per image."""
    return write_csv(path, list(header), rows)


def write_messidor2_pairs(
    fixture: Fixture, path: Path, header: str | None = "left,right", separator: str = ","
) -> Path:
    """Messidor-2's examination pairs for a `make_messidor2` fixture: rows 0+1, 2+3, ... are one examination."""
    names = label_names(fixture)
    lines = [f"{names[i]}{separator}{names[i + 1]}\n" for i in range(0, len(names) - 1, 2)]
    path.write_text((f"{header}\n" if header else "") + "".join(lines), encoding="utf-8")
    return path


def make_eyepacs_photos(root: Path, patients: int = 5, side: int = 384) -> Fixture:
    """EyePACS-shaped like `make_eyepacs`, with photographs: crops of a real fundus photograph (scikit-image's
    ``data.retina()``, CC0), a different crop, tint and sensor noise per image, saved as JPEG (quality 90) at
    ``side`` px, so an image costs what a photograph costs on disk, not what a drawn frame does."""
    from skimage import data

    photo = Image.fromarray(data.retina())
    images = root / "train"
    images.mkdir(parents=True)
    rows, grades = [], {}
    for patient in range(1, patients + 1):
        for eye, offset in (("left", 0), ("right", 1)):
            rng = np.random.default_rng(patient * 2 + offset)
            crop = int(photo.width * rng.uniform(0.8, 1.0))
            left, top = (int(v) for v in rng.integers(0, photo.width - crop + 1, 2))
            pixels = np.asarray(photo.crop((left, top, left + crop, top + crop)).resize((side, side)), np.float32)
            pixels = pixels * rng.uniform(0.85, 1.15, 3) + rng.normal(0, 3, pixels.shape)
            name = f"{patient * 3}_{eye}"
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(images / f"{name}.jpeg", quality=90)
            rows.append([name, (patient + offset) % 5])
            grades[name] = (patient + offset) % 5
    return Fixture([write_csv(root / "trainLabels.csv", ["image", "level"], rows)], [images], grades)
