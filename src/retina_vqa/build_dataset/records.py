"""What every stage of the dataset builder passes on: a labelled image and a problem with the input.

This module owns `LabelRecord` (one image as a label file describes it, later with its resolved file path),
`Problem` (one bad row, file or image), the kinds of problem with their explanations and fixes
(`PROBLEM_KINDS`), `InputReport` (all problems at once, as the user reads them) and `InputError` (the error
that carries the report, or a fatal problem such as a wrong header).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["PROBLEM_KINDS", "InputError", "InputReport", "LabelRecord", "Problem"]


@dataclass
class LabelRecord:
    """One labelled image.

    ``grade`` is the ICDR grade 0-4, or None where the source calls the image ungradable. ``image`` is the
    file as the label file names it, found in ``images_dir``; ``path`` is set once the file is found.
    ``macular_oedema`` is a key of `retina_vqa.questions.MACULAR_OEDEMA_ANSWERS`; ``source_split`` the
    split the publisher assigned ("train", "validation", "test"), if any.
    """

    image: str
    image_id: str
    grade: int | None
    label_file: str
    line: int
    images_dir: str
    patient_id: str | None = None
    laterality: str | None = None
    macular_oedema: str | None = None
    source_split: str | None = None
    path: str | None = None

    @property
    def where(self) -> str:
        return f"{self.label_file} line {self.line}"

    @property
    def gradable(self) -> bool:
        return self.grade is not None


# kind -> (what the user sees as the heading, the fix). Order = order in the report.
PROBLEM_KINDS: dict[str, tuple[str, str]] = {
    "malformed_line": (
        "lines that are not in their file's format (DDR labels: '<image file> <label>'; --messidor2_pairs: two "
        "image names)",
        "correct these lines, or pass --skip_invalid to drop them (images they alone name are left out)",
    ),
    "unknown_value": (
        "label values the source does not define (grades and other labels)",
        "correct the values (the detail names the column and the values allowed), or pass --skip_invalid to drop "
        "these rows",
    ),
    "duplicate_label": (
        "images labelled more than once",
        "keep one row per image, or pass --skip_invalid to keep the first row and drop the others",
    ),
    "outside_images_folder": (
        "label rows whose image path leads outside the images folder (an absolute path, '..', or a symlink)",
        "name each image by its path inside --images (move or copy the files into the folder, or point --images at "
        "a folder that holds them), or pass --skip_invalid to drop these rows",
    ),
    "missing_image": (
        "label rows whose image file is not in the images folder",
        "put the files in the folder (or point --images at the folder that holds them; with several --labels "
        "files give one --images folder per file, in the same order), or pass --skip_invalid to drop these rows",
    ),
    "unlabelled_image": (
        "image files that no label row names",
        "check that --labels and --images belong together, add the missing labels or move the files out, or pass "
        "--skip_invalid to leave them out",
    ),
    "unreadable_image": (
        "image files that cannot be decoded (empty, truncated, corrupt or not an image)",
        "re-download or re-export these files, or pass --skip_invalid to drop them",
    ),
    "patient_missing": (
        "labelled images that the patients file (--patients, --messidor2_pairs) gives no patient",
        "add a row for each (image,patient_id; for Messidor-2 the examination pair), or pass --skip_invalid to "
        "leave these images out",
    ),
    "patient_unknown_image": (
        "rows of the patients file that name no labelled image, or more than one",
        "check that the patients file belongs to --labels; name each image as the label file or the images folder "
        "does, or by its image_id where two label files share a name; or pass --skip_invalid to ignore these rows",
    ),
    "patient_conflict": (
        "images that the patients file gives two different patients",
        "keep one patient per image, or pass --skip_invalid to keep the first row's patient",
    ),
}


@dataclass(frozen=True)
class Problem:
    """One bad row, file or image: ``where`` is ``"<label file> line N"`` or an image path.

    A bad label row still names its image (``image`` in ``images_dir``), so that file is not reported a second
    time as an image no label names.
    """

    kind: str
    where: str
    detail: str
    image: str | None = None
    images_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; expected one of {list(PROBLEM_KINDS)}")

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


@dataclass
class InputReport:
    """Every problem found in the input, grouped by kind, each kind with its fix."""

    problems: list[Problem] = field(default_factory=list)

    def extend(self, problems: Iterable[Problem]) -> None:
        self.problems.extend(problems)

    def counts(self) -> dict[str, int]:
        counter = collections.Counter(p.kind for p in self.problems)
        return {kind: counter[kind] for kind in PROBLEM_KINDS if counter[kind]}

    def format(self, limit_per_kind: int = 20) -> str:
        by_kind: dict[str, list[Problem]] = collections.defaultdict(list)
        for problem in self.problems:
            by_kind[problem.kind].append(problem)
        lines = [f"{len(self.problems)} problem(s) in the input:"]
        for kind, (heading, fix) in PROBLEM_KINDS.items():
            found = by_kind.get(kind)
            if not found:
                continue
            lines.append(f"{kind} ({len(found)}): {heading}")
            lines += [f"  - {p}" for p in found[:limit_per_kind]]
            if len(found) > limit_per_kind:
                lines.append(f"  ... and {len(found) - limit_per_kind} more")
            lines.append(f"  fix: {fix}")
        return "\n".join(lines)


class InputError(ValueError):
    """The input cannot be built into a dataset as it is; the message says where and how to fix it.

    ``report`` holds the problems when there is a list of them (None for a single fatal error such as a
    header that does not match the source).
    """

    def __init__(self, message: str, report: InputReport | None = None) -> None:
        super().__init__(message)
        self.report = report
