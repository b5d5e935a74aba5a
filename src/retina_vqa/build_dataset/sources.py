"""Readers of the public graded fundus datasets' label files, as their publishers ship them.

This module owns one reader per ``--source`` and the facts each relies on (`SOURCES`):

- ``aptos``: APTOS 2019 ``train.csv``: ``id_code``, ``diagnosis`` (0-4); images ``{id_code}.png``.
- ``eyepacs``: Kaggle DR 2015 ``trainLabels.csv``: ``image``, ``level`` (0-4); images ``{image}.jpeg``, named
  ``10_left`` / ``10_right`` (patient 10, both eyes).
- ``idrid``: IDRiD disease grading CSVs: ``Image name``, ``Retinopathy grade`` (0-4), ``Risk of macular edema ``
  (0-2; the header carries a trailing space); images ``{Image name}.jpg``. The ``Training`` / ``Testing``
  in the file name is the source's split.
- ``messidor2``: ``messidor_data.csv`` (the adjudicated grades of Krause et al. 2018): ``image_id`` (file name
  with extension), ``adjudicated_dr_grade``, ``adjudicated_dme`` (0/1), ``adjudicated_gradable`` (0/1;
  ungradable rows have an empty grade).
- ``ddr``: ``DR_grading/{train,valid,test}.txt``: ``<file.jpg> <label>`` per line, no header, label 5 =
  ungradable; the file name is the split.
- ``csv``: any CSV, columns named by ``--image_column`` / ``--grade_column`` (0-4) and optionally
  ``--patient_column`` / ``--laterality_column``.

A reader turns one label file into `LabelRecord`s and `Problem`s (rows it cannot use: unknown values,
malformed lines); a header that does not fit the source stops the build at once (`InputError`) with the
columns expected and, where the header fits another source, the ``--source`` to use.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .records import InputError, LabelRecord, Problem

__all__ = ["SOURCES", "CsvColumns", "SourceSpec", "read_labels"]

GRADES = range(0, 5)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class CsvColumns:
    """The column mapping of ``--source csv``."""

    image_column: str
    grade_column: str
    patient_column: str | None = None
    laterality_column: str | None = None

    def __post_init__(self) -> None:
        # Headers are read with their names stripped (IDRiD's trailing space): so are the names asked for.
        for name in ("image_column", "grade_column", "patient_column", "laterality_column"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, value.strip() or None)

    def required(self) -> tuple[str, ...]:
        names = (self.image_column, self.grade_column, self.patient_column, self.laterality_column)
        return tuple(n for n in names if n)


@dataclass(frozen=True)
class SourceSpec:
    """What a source ships: its name, the label file's columns (empty: no header) and what its labels say;
    ``patients``: where its labels name the patient (None: nowhere, ``--patients`` can)."""

    title: str
    columns: tuple[str, ...]
    shipped_as: str
    grades_gradability: bool = False
    patients: str | None = None


SOURCES: dict[str, SourceSpec] = {
    "aptos": SourceSpec("APTOS 2019 Blindness Detection", ("id_code", "diagnosis"), "train.csv"),
    "eyepacs": SourceSpec(
        "EyePACS (Kaggle Diabetic Retinopathy 2015)",
        ("image", "level"),
        "trainLabels.csv",
        patients="the image names (`10_left` / `10_right`: patient 10)",
    ),
    "idrid": SourceSpec(
        "IDRiD disease grading",
        ("Image name", "Retinopathy grade", "Risk of macular edema "),
        "'2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv' and 'b. ..._Testing Labels.csv'",
    ),
    "messidor2": SourceSpec(
        "Messidor-2 (adjudicated grades, Krause et al. 2018)",
        ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"),
        "messidor_data.csv",
        grades_gradability=True,
    ),
    "ddr": SourceSpec(
        "DDR (DR grading)", (), "DR_grading/train.txt, valid.txt, test.txt ('<file.jpg> <label>', no header)", True
    ),
    "csv": SourceSpec(
        "a CSV label file",
        (),
        "--image_column/--grade_column/--patient_column/--laterality_column",
        patients="the label file's --patient_column",  # named by `BuildOptions.patients_note`
    ),
}

_EYEPACS_NAME = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$")
_LATERALITY = {"left": "left", "l": "left", "os": "left", "right": "right", "r": "right", "od": "right"}
_DDR_SPLITS = {"train": "train", "valid": "validation", "val": "validation", "validation": "validation", "test": "test"}


def _level(text: str, allowed: range) -> int | None:
    """An integer label written as "2", " 2" or "2.0" (spreadsheets export floats), if it is in ``allowed``."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not value.is_integer() or int(value) not in allowed:
        return None
    return int(value)


def _unknown(
    label_file: Path, line: int, column: str, value: str, allowed: str, image: str | None, images_dir: Path
) -> Problem:
    detail = f"{column} = {value!r}; expected {allowed}"
    return Problem("unknown_value", f"{label_file.name} line {line}", detail, image, str(images_dir))


def _header_error(label_file: Path, header: Sequence[str], expected: Sequence[str], source: str) -> InputError:
    found = [h.strip() for h in header]
    guesses = [
        name
        for name, spec in SOURCES.items()
        if name != source and spec.columns and all(c.strip() in found for c in spec.columns)
    ]
    hint = f" It looks like the {SOURCES[guesses[0]].title} label file: pass --source {guesses[0]}." if guesses else ""
    flag_hint = (
        " Name the columns with --image_column and --grade_column (and --patient_column / --laterality_column)."
        if source == "csv"
        else " For another layout use --source csv --image_column COLUMN --grade_column COLUMN."
    )
    return InputError(
        f"{label_file}: the header has columns {list(header)}, but --source {source} expects {list(expected)} "
        f"(as {SOURCES[source].shipped_as} ships them; leading/trailing spaces are ignored).{hint}{flag_hint}"
    )


def _csv_rows(label_file: Path, expected: Sequence[str], source: str) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, {column: stripped value})`` for each non-blank row, after checking the header."""
    # utf-8-sig: CSVs saved by spreadsheet programs start with a byte-order mark that would stick to column 1.
    with open(label_file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{label_file} is empty; expected a header with {list(expected)}")
        # IDRiD's "Risk of macular edema " has a trailing space, and extra empty columns follow it: match
        # names stripped, ignore columns nobody asked for.
        names = [h.strip() for h in header]
        wanted = [c.strip() for c in expected]
        if any(c not in names for c in wanted):
            raise _header_error(label_file, header, expected, source)
        index = {c: names.index(c) for c in wanted}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank rows (IDRiD's CSVs end with some)
            yield reader.line_num, {c: (row[i].strip() if i < len(row) else "") for c, i in index.items()}


def _record(label_file: Path, line: int, images_dir: Path, **fields) -> LabelRecord:
    return LabelRecord(label_file=label_file.name, line=line, images_dir=str(images_dir), **fields)


# -------------------------------------------------------------------------------------------------------- readers
# Each yields LabelRecord or Problem for one label file.

Reader = Callable[[Path, Path, CsvColumns | None], Iterator[LabelRecord | Problem]]


def _read_aptos(label_file: Path, images_dir: Path, _: CsvColumns | None) -> Iterator[LabelRecord | Problem]:
    for line, row in _csv_rows(label_file, SOURCES["aptos"].columns, "aptos"):
        image = f"{row['id_code']}.png"
        grade = _level(row["diagnosis"], GRADES)
        if grade is None:
            yield _unknown(label_file, line, "diagnosis", row["diagnosis"], "an ICDR grade 0-4", image, images_dir)
            continue
        yield _record(label_file, line, images_dir, image=image, image_id=row["id_code"], grade=grade)


def _read_eyepacs(label_file: Path, images_dir: Path, _: CsvColumns | None) -> Iterator[LabelRecord | Problem]:
    for line, row in _csv_rows(label_file, SOURCES["eyepacs"].columns, "eyepacs"):
        name = row["image"]
        grade = _level(row["level"], GRADES)
        if grade is None:
            yield _unknown(label_file, line, "level", row["level"], "an ICDR grade 0-4", f"{name}.jpeg", images_dir)
            continue
        # "10_left" / "10_right": one patient, two eyes; the split keeps both in one split.
        match = _EYEPACS_NAME.match(name)
        yield _record(
            label_file,
            line,
            images_dir,
            image=f"{name}.jpeg",
            image_id=name,
            grade=grade,
            patient_id=match["patient"] if match else name,
            laterality=match["eye"] if match else None,
        )


def _split_from_name(label_file: Path, table: dict[str, str]) -> str | None:
    words = re.split(r"[^a-z]+", label_file.stem.lower())
    for word in words:
        if word in table:
            return table[word]
    return None


def _read_idrid(label_file: Path, images_dir: Path, _: CsvColumns | None) -> Iterator[LabelRecord | Problem]:
    split = _split_from_name(label_file, {"training": "train", "train": "train", "testing": "test", "test": "test"})
    dme_keys = ("none", "low", "high")
    for line, row in _csv_rows(label_file, SOURCES["idrid"].columns, "idrid"):
        image = f"{row['Image name']}.jpg"
        grade = _level(row["Retinopathy grade"], GRADES)
        dme = _level(row["Risk of macular edema"], range(3))
        if grade is None:
            value = row["Retinopathy grade"]
            yield _unknown(label_file, line, "Retinopathy grade", value, "an ICDR grade 0-4", image, images_dir)
            continue
        if dme is None:
            value = row["Risk of macular edema"]
            yield _unknown(label_file, line, "Risk of macular edema", value, "0, 1 or 2", image, images_dir)
            continue
        yield _record(
            label_file,
            line,
            images_dir,
            image=image,
            image_id=row["Image name"],
            grade=grade,
            macular_oedema=dme_keys[dme],
            source_split=split,
        )


def _read_messidor2(label_file: Path, images_dir: Path, _: CsvColumns | None) -> Iterator[LabelRecord | Problem]:
    for line, row in _csv_rows(label_file, SOURCES["messidor2"].columns, "messidor2"):
        image = row["image_id"]
        gradable = _level(row["adjudicated_gradable"], range(2))
        if gradable is None:
            value = row["adjudicated_gradable"]
            yield _unknown(label_file, line, "adjudicated_gradable", value, "0 or 1", image, images_dir)
            continue
        fields = {"image": image, "image_id": PurePosixPath(image).stem}
        if gradable == 0:
            # Ungradable: the adjudicators gave no grade and no oedema label.
            yield _record(label_file, line, images_dir, grade=None, **fields)
            continue
        grade = _level(row["adjudicated_dr_grade"], GRADES)
        dme = _level(row["adjudicated_dme"], range(2))
        if grade is None:
            value = row["adjudicated_dr_grade"]
            yield _unknown(label_file, line, "adjudicated_dr_grade", value, "an ICDR grade 0-4", image, images_dir)
            continue
        if dme is None:
            yield _unknown(label_file, line, "adjudicated_dme", row["adjudicated_dme"], "0 or 1", image, images_dir)
            continue
        yield _record(label_file, line, images_dir, grade=grade, macular_oedema=("not_high", "high")[dme], **fields)


def _read_ddr(label_file: Path, images_dir: Path, _: CsvColumns | None) -> Iterator[LabelRecord | Problem]:
    split = _split_from_name(label_file, _DDR_SPLITS)
    with open(label_file, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            parts = text.strip().rsplit(maxsplit=1)
            if line == 1 and (len(parts) < 2 or _level(parts[1], range(6)) is None):
                if not parts[0].lower().endswith(IMAGE_EXTENSIONS):
                    raise InputError(
                        f"{label_file}: line 1 is {text.strip()!r}, but DDR label files have no header: every line "
                        "is '<image file> <label 0-5>' (e.g. '007-0004-000.jpg 0'). Is this the right --source? "
                        "For a CSV with a header use --source csv --image_column COLUMN --grade_column COLUMN."
                    )
            if len(parts) != 2:
                where = f"{label_file.name} line {line}"
                yield Problem("malformed_line", where, f"{text.strip()!r} is not '<image file> <label>'")
                continue
            name, label = parts
            value = _level(label, range(6))
            if value is None:
                yield _unknown(label_file, line, "label", label, "0-4, or 5 for ungradable", name, images_dir)
                continue
            grade = None if value == 5 else value
            yield _record(
                label_file,
                line,
                images_dir,
                image=name,
                image_id=PurePosixPath(name).stem,
                grade=grade,
                source_split=split,
            )


def _read_csv(label_file: Path, images_dir: Path, columns: CsvColumns | None) -> Iterator[LabelRecord | Problem]:
    if columns is None:
        raise ValueError("--source csv needs --image_column and --grade_column")
    for line, row in _csv_rows(label_file, columns.required(), "csv"):
        image = row[columns.image_column]
        if not image:
            yield _unknown(label_file, line, columns.image_column, image, "an image file name", None, images_dir)
            continue
        grade = _level(row[columns.grade_column], GRADES)
        if grade is None:
            value = row[columns.grade_column]
            yield _unknown(label_file, line, columns.grade_column, value, "an ICDR grade 0-4", image, images_dir)
            continue
        laterality = None
        if columns.laterality_column:
            value = row[columns.laterality_column]
            laterality = _LATERALITY.get(value.lower())
            if laterality is None:
                allowed = "left/right (or L/R, OS/OD)"
                yield _unknown(label_file, line, columns.laterality_column, value, allowed, image, images_dir)
                continue
        patient = row[columns.patient_column] if columns.patient_column else None
        yield _record(
            label_file,
            line,
            images_dir,
            image=image,
            image_id=str(PurePosixPath(image).with_suffix("")) if PurePosixPath(image).suffix else image,
            grade=grade,
            patient_id=patient or None,
            laterality=laterality,
        )


_READERS: dict[str, Reader] = {
    "aptos": _read_aptos,
    "eyepacs": _read_eyepacs,
    "idrid": _read_idrid,
    "messidor2": _read_messidor2,
    "ddr": _read_ddr,
    "csv": _read_csv,
}


def read_labels(
    source: str,
    label_files: Sequence[Path],
    images_dirs: Sequence[Path],
    columns: CsvColumns | None = None,
) -> tuple[list[LabelRecord], list[Problem]]:
    """Every labelled image of ``label_files`` (``images_dirs``: one folder for all, or one per file) and the
    rows that cannot be used. Raises `InputError` for a missing label file or a header that does not fit."""
    if source not in _READERS:
        raise ValueError(f"--source must be one of {', '.join(_READERS)}, got {source!r}")
    if len(images_dirs) not in (1, len(label_files)):
        raise ValueError(
            f"--images needs one folder for all --labels files or one per file (in the same order); got "
            f"{len(images_dirs)} folder(s) for {len(label_files)} file(s)"
        )
    records: list[LabelRecord] = []
    problems: list[Problem] = []
    for i, label_file in enumerate(label_files):
        label_file = Path(label_file)
        if not label_file.is_file():
            raise InputError(f"--labels {label_file} is not a file; expected {SOURCES[source].shipped_as}")
        images_dir = Path(images_dirs[i if len(images_dirs) > 1 else 0])
        for item in _READERS[source](label_file, images_dir, columns):
            (records if isinstance(item, LabelRecord) else problems).append(item)
    return records, problems
