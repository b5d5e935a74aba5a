"""Who each image's patient is, where the label file does not say: ``--patients`` and Messidor-2's pairs.

APTOS, IDRiD, DDR and Messidor-2 name no patients in their label files, so a split of their images could put
one person's two eyes in training and testing. This module owns the two files that say who is who:

- `read_patients`: ``--patients FILE``, for every source: a CSV with the header ``image,patient_id`` (names
  stripped, any case; other columns ignored), one row per image. ``image`` is the image as the label file
  names it, its file name in the images folder (with or without the extension), or the ``image_id`` the
  dataset gives it (``train/IDRiD_001`` where two label files share a name). It replaces whatever patients
  the source names (EyePACS ``10_left``: patient 10; ``--patient_column``).
- `read_messidor2_pairs`: ``--messidor2_pairs FILE``, the examination pairs Messidor-2 ships (its
  spreadsheet saved as CSV or text): one examination per line, its two image names (left eye, right eye)
  separated by a comma, semicolon, tab or spaces; a first line naming no image file (``left,right``) is a
  header. Both images of one examination are one patient, ``<first image>+<second image>`` (stems).
- `assign_patients`: those rows matched to the labelled images, setting ``patient_id``.

Problems go into the build's one report (`records.PROBLEM_KINDS`): an image the file does not name
(``patient_missing``: left out with ``--skip_invalid``), a row naming no labelled image or more than one
(``patient_unknown_image``: ignored), an image given two patients (``patient_conflict``: the first row
wins), an empty cell (``unknown_value``), a pairs line that is not two names (``malformed_line``). A
header that does not fit stops the build at once (`InputError`), like a label file's.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .records import InputError, LabelRecord, Problem
from .sources import IMAGE_EXTENSIONS

__all__ = ["PATIENT_COLUMNS", "PatientRow", "assign_patients", "read_messidor2_pairs", "read_patients"]

PATIENT_COLUMNS = ("image", "patient_id")
_PAIR_SEPARATORS = re.compile(r"[,;\t]")


@dataclass(frozen=True)
class PatientRow:
    """One image's patient as a file gives it: ``where`` is ``"<file> line N"``. ``patient_id`` is None on a
    row that is reported as a problem: it names the image (which is then not reported again as missing) but
    gives it no patient."""

    where: str
    image: str
    patient_id: str | None


def _is_image_name(text: str) -> bool:
    return text.lower().endswith(IMAGE_EXTENSIONS)


def _without_extension(name: str) -> str:
    return str(PurePosixPath(name).with_suffix("")) if _is_image_name(name) else name


def _check_file(path: Path, flag: str, expected: str) -> None:
    if not path.is_file():
        raise InputError(f"{flag} {path} is not a file; expected {expected}")


def read_patients(path: Path) -> tuple[list[PatientRow], list[Problem]]:
    """The rows of a ``--patients`` file and its rows with an empty cell. Raises `InputError` for a missing
    file or a header without ``image`` and ``patient_id``."""
    path = Path(path)
    _check_file(path, "--patients", "a CSV with the header 'image,patient_id'")
    rows: list[PatientRow] = []
    problems: list[Problem] = []
    # utf-8-sig: a CSV saved by a spreadsheet program starts with a byte-order mark that would stick to "image".
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        names = [h.strip().lower() for h in header or []]
        if not all(c in names for c in PATIENT_COLUMNS):
            raise _patients_header_error(path, header)
        image_at, patient_at = (names.index(c) for c in PATIENT_COLUMNS)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path.name} line {reader.line_num}"
            image, patient = (row[i].strip() if i < len(row) else "" for i in (image_at, patient_at))
            if not image:
                problems.append(Problem("unknown_value", where, "image = ''; expected an image name"))
                continue
            if not patient:
                problems.append(Problem("unknown_value", where, "patient_id = ''; expected the patient's id", image))
            rows.append(PatientRow(where, image, patient or None))
    return rows, problems


def _patients_header_error(path: Path, header: Sequence[str] | None) -> InputError:
    found = [h.strip() for h in header or []]
    if not found:
        hint = " The file is empty."
    elif any(_is_image_name(cell) or any(c.isdigit() for c in cell) for cell in found):
        hint = " Its line 1 looks like data, not a header: add the line 'image,patient_id' above it."
    elif {c.lower() for c in found} & {"left", "right", "left eye", "right eye"}:
        hint = " It looks like examination pairs: for Messidor-2's pairs list use --messidor2_pairs FILE instead."
    else:
        hint = ""
    return InputError(
        f"--patients {path}: line 1 has the columns {list(header or [])}, but a patients file needs the columns "
        f"{list(PATIENT_COLUMNS)} (any case; other columns are ignored): one row per image, the image as the label "
        f"file or the images folder names it (or its image_id), and its patient's id.{hint} Fix: make line 1 "
        "'image,patient_id' and the columns below it match."
    )


def read_messidor2_pairs(path: Path) -> tuple[list[PatientRow], list[Problem]]:
    """A ``--messidor2_pairs`` file as `PatientRow`s (two per examination) and the lines that are not a pair."""
    path = Path(path)
    _check_file(path, "--messidor2_pairs", "Messidor-2's examination pairs (two image names per line)")
    rows: list[PatientRow] = []
    problems: list[Problem] = []
    with open(path, encoding="utf-8-sig") as f:
        seen_first = False
        for line, text in enumerate(f, start=1):
            text = text.strip()
            if not text:
                continue
            parts = _PAIR_SEPARATORS.split(text) if _PAIR_SEPARATORS.search(text) else text.split()
            cells = [cell.strip().strip('"') for cell in parts if cell.strip().strip('"')]
            first, seen_first = not seen_first, True
            if first and not any(_is_image_name(cell) for cell in cells):
                continue  # a header: "left,right", "Left eye;Right eye"
            images = [cell for cell in cells if _is_image_name(cell)]
            if len(cells) != 2 and len(images) == 2:
                cells = images  # the pair among other columns (an examination number)
            where = f"{path.name} line {line}"
            if len(cells) != 2:
                detail = f"{text!r} is not two image names (one examination: left eye, right eye)"
                problems.append(Problem("malformed_line", where, detail))
                rows += [PatientRow(where, cell, None) for cell in cells]
                continue
            patient = "+".join(PurePosixPath(_without_extension(cell)).name for cell in cells)
            rows += [PatientRow(where, cell, patient) for cell in cells]
    return rows, problems


def _names_of(record: LabelRecord) -> set[str]:
    """Every name a patients file may give ``record``'s image by."""
    names = {record.image, record.image_id, _without_extension(record.image)}
    if record.path is not None:
        file_name = os.path.relpath(record.path, record.images_dir).replace(os.sep, "/")
        names |= {file_name, _without_extension(file_name)}
    return names


def assign_patients(
    records: Sequence[LabelRecord],
    rows: Sequence[PatientRow],
    needed: Iterable[LabelRecord],
    patients_file: Path,
    other_names: Iterable[str] = (),
) -> list[Problem]:
    """Set ``patient_id`` on ``records`` from ``rows`` (every earlier patient id is replaced; None where no row
    names the image) and return the problems: rows naming no labelled image or several, images given two
    patients, and each of ``needed`` (the images the dataset will hold) that no row names.

    Images are matched among ``records`` that have a file (`checks.find_images` has run); the names of the
    other label rows, and ``other_names`` (rows the readers rejected), are labelled images too: a row naming
    them is no problem, and gives nothing.
    """
    by_name: dict[str, dict[int, LabelRecord]] = {}
    for record in records:
        record.patient_id = None
        if record.path is not None:
            for name in _names_of(record):
                by_name.setdefault(name, {})[id(record)] = record
    known = {name for record in records for name in _names_of(record)}
    known |= {name for other in other_names for name in (other, _without_extension(other))}
    problems: list[Problem] = []
    given: dict[int, PatientRow] = {}
    named: set[int] = set()
    for row in rows:
        matches = by_name.get(row.image) or by_name.get(_without_extension(row.image)) or {}
        if row.patient_id is None:  # reported by the reader
            named.update(matches)
            continue
        if len(matches) > 1:
            ids = ", ".join(sorted(r.image_id for r in matches.values()))
            detail = f"{row.image} names {len(matches)} labelled images ({ids}); name each by its image_id"
            problems.append(Problem("patient_unknown_image", row.where, detail, row.image))
            continue
        if not matches:
            if row.image not in known and _without_extension(row.image) not in known:
                detail = f"{row.image} names no labelled image"
                problems.append(Problem("patient_unknown_image", row.where, detail, row.image))
            continue
        key, record = next(iter(matches.items()))
        named.add(key)
        first = given.get(key)
        if first is None:
            given[key] = row
            record.patient_id = row.patient_id
        elif first.patient_id != row.patient_id:
            detail = f"{row.image} is already given patient {first.patient_id} at {first.where}"
            problems.append(Problem("patient_conflict", row.where, detail, row.image))
    for record in needed:
        if id(record) not in named:
            detail = f"{record.image} has no row in {patients_file}"
            problems.append(Problem("patient_missing", record.where, detail, record.image))
    return problems
