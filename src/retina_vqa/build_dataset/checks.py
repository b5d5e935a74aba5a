"""Finding what is wrong with the input before anything is written.

This module owns:

* `ImageIndex`: the files of one images folder, found by the name a label file gives, by that name in any
  case (``IM0001.JPG`` labelled ``IM0001.jpg``), or by a unique stem (an APTOS folder converted to JPEG);
* `find_images`: label rows matched to files: image paths that lead outside the images folder (absolute, or
  out by ``..`` or a symlink: a third-party label file must not pull other files into a dataset that may be
  published), images that are missing, files no label names, images labelled twice (compared by the file a
  path resolves to, so ``x/../a.jpg`` and a symlink to ``a.jpg`` are ``a.jpg``); image ids made unique where
  two label files reuse a name (IDRiD numbers its training and testing images from 1 each);
* `inspect_image` / `check_images`: the up-front image check, in parallel: the header is read (not an image,
  zero size, too large) and the last bytes must hold the format's end marker (JPEG's EOI, PNG's IEND), which
  a truncated download lacks. Only files that this cannot vouch for (other formats, data after the end
  marker) are decoded here; the full decode happens once, while writing, and a file that fails there is
  reported the same way (`writer`).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .records import InputError, LabelRecord, Problem
from .sources import IMAGE_EXTENSIONS

__all__ = ["ImageIndex", "check_images", "find_images", "inspect_image"]

logger = logging.getLogger(__name__)

# Bytes read from the end of each file for the end marker: room for a few bytes of padding after it.
_TAIL = 64
# Side at which a file without a trustworthy end marker is decoded to prove it readable (JPEGs decode at a
# reduced DCT scale, so this costs a fraction of a full decode).
_PROBE_SIDE = 256


class ImageIndex:
    """The image files directly inside one folder, looked up by name, name in any case, or unique stem."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise InputError(f"--images {folder} is not a folder; point it at the folder that holds the images")
        self.folder = folder
        self.real_folder = os.path.realpath(folder)
        self.files: dict[str, str] = {}
        # file path -> the file it resolves to; only symlinks need a system call (scandir knows which they are).
        self.real: dict[str, str] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if entry.is_file():
                    self.files[entry.name] = entry.path
                    real = os.path.realpath(entry.path) if entry.is_symlink() else None
                    self.real[entry.path] = real or os.path.join(self.real_folder, entry.name)
        self._by_lower: dict[str, list[str]] = collections.defaultdict(list)
        self._by_stem: dict[str, list[str]] = collections.defaultdict(list)
        for name, path in self.files.items():
            self._by_lower[name.lower()].append(path)
            self._by_stem[PurePosixPath(name).stem].append(path)

    def resolve(self, name: str) -> str | None:
        """The file a label row means by ``name``, or None."""
        if "/" in name or os.sep in name:
            path = self.folder / name
            return str(path) if path.is_file() else None
        if name in self.files:
            return self.files[name]
        same_name = self._by_lower.get(name.lower(), [])
        if len(same_name) == 1:
            return same_name[0]
        stem = PurePosixPath(name).stem if name.lower().endswith(IMAGE_EXTENSIONS) else name
        same_stem = self._by_stem.get(stem, [])
        return same_stem[0] if len(same_stem) == 1 else None

    def real_path(self, path: str) -> str:
        """The file ``path`` (from `resolve`) is, after ``..`` and symlinks."""
        return self.real.get(path) or os.path.realpath(path)

    def outside(self, name: str) -> str | None:
        """Why ``name`` leads outside the folder (absolute, or out by ``..`` or a symlink), or None if it does not."""
        if os.path.isabs(name) or PurePosixPath(name).is_absolute():
            return f"{name} is an absolute path, not a path inside {self.folder}"
        path = self.resolve(name)
        if path is None and ("/" in name or os.sep in name):
            path = str(self.folder / name)  # refused whether the file exists or not
        if path is None:
            return None
        real = self.real_path(path)
        if _inside(real, self.real_folder):
            return None
        how = "is a symlink to" if os.path.islink(path) else "resolves to"
        return f"{name} {how} {real}, outside {self.folder}"


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False


def find_images(records: Sequence[LabelRecord], bad_rows: Sequence[Problem] = ()) -> list[Problem]:
    """Set ``path`` on each record whose image exists; the problems of the others and of unlabelled files.

    ``bad_rows`` are rows the readers already rejected: their files count as labelled. Records that get a
    problem keep ``path = None``.
    """
    indexes: dict[str, ImageIndex] = {}

    def index_of(folder: str) -> ImageIndex:
        if folder not in indexes:
            indexes[folder] = ImageIndex(Path(folder))
        return indexes[folder]

    problems: list[Problem] = []
    # Keyed by the file a path resolves to: "x/../a.jpg", a symlink to a.jpg and "a.jpg" are one image.
    claimed: dict[str, LabelRecord] = {}
    named: set[str] = set()  # files named by rows that are reported: not "unlabelled" as well
    named_links: set[str] = set()  # symlinks out of the folder that a reported row names
    for problem in bad_rows:
        if problem.image is not None and problem.images_dir is not None:
            index = index_of(problem.images_dir)
            path = index.resolve(problem.image) if index.outside(problem.image) is None else None
            if path is not None:
                named.add(index.real_path(path))
    for record in records:
        index = index_of(record.images_dir)
        outside = index.outside(record.image)
        if outside is not None:
            problems.append(Problem("outside_images_folder", record.where, outside, record.image))
            found = index.resolve(record.image)
            if found is not None:  # a symlink in the folder: reported here, not again as unlabelled
                named_links.add(found)
            continue
        path = index.resolve(record.image)
        if path is None:
            problems.append(
                Problem("missing_image", record.where, f"{record.image} is not in {record.images_dir}", record.image)
            )
            continue
        real = index.real_path(path)
        first = claimed.get(real)
        if first is not None:
            conflict = ""
            if first.grade != record.grade:
                conflict = f" with another grade ({first.grade} there, {record.grade} here)"
            detail = f"{record.image} is also labelled at {first.where}{conflict}"
            problems.append(Problem("duplicate_label", record.where, detail, record.image))
            continue
        record.path = path
        claimed[real] = record
    for index in indexes.values():
        for name in sorted(index.files):
            path = index.files[name]
            real = index.real_path(path)
            if real not in claimed and real not in named and path not in named_links:
                problems.append(Problem("unlabelled_image", path, "no label row names this file"))
    _make_ids_unique([r for r in records if r.path is not None])
    return problems


def _make_ids_unique(records: Sequence[LabelRecord]) -> None:
    by_id: dict[str, list[LabelRecord]] = collections.defaultdict(list)
    for record in records:
        by_id[record.image_id].append(record)
    for image_id, same in by_id.items():
        if len(same) < 2:
            continue
        # Different files with one name (IDRiD's training and testing sets both start at IDRiD_001): prefix the
        # split (or the label file) so that image_id keeps naming one image.
        for record in same:
            record.image_id = f"{record.source_split or PurePosixPath(record.label_file).stem}/{image_id}"
        if len({r.image_id for r in same}) < len(same):
            for record in same:
                record.image_id = record.path or record.image_id


def inspect_image(path: str) -> str | None:
    """Why the image file cannot be used, or None when it looks whole (see the module docstring)."""
    from PIL import Image

    from ..data.images import ImageLoadError, load_image

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "the file is empty (0 bytes)"
            try:
                with Image.open(f) as image:
                    image_format, (width, height) = image.format, image.size
            except Image.DecompressionBombError as error:
                return f"the image is too large to decode safely ({error})"
            except Exception as error:  # Pillow's format plugins raise many types for malformed headers.
                return f"not a readable image ({error})"
            if width == 0 or height == 0:
                return f"the image has zero size ({width}x{height})"
            f.seek(max(0, size - _TAIL))
            tail = f.read().rstrip(b"\x00")
    except OSError as error:
        return f"the file cannot be read ({error})"
    if image_format == "JPEG" and tail.endswith(b"\xff\xd9"):
        return None
    if image_format == "PNG" and b"IEND" in tail[-16:]:
        return None
    try:
        load_image(path, max_side=_PROBE_SIDE)
    except ImageLoadError as error:
        return error.reason
    return None


def _inspect(path: str) -> tuple[str, str | None]:
    return path, inspect_image(path)


def check_images(records: Sequence[LabelRecord], num_proc: int = 1, progress: bool = True) -> list[Problem]:
    """`inspect_image` for every record with a path, ``num_proc`` files at a time."""
    paths = [r.path for r in records if r.path is not None]
    by_path = {r.path: r for r in records if r.path is not None}
    problems: list[Problem] = []
    bar = tqdm(total=len(paths), desc="Checking images", unit="img", disable=not progress)
    if num_proc > 1 and len(paths) > 64:
        # fork: the workers need only Pillow and the paths; results come back in order.
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with context.Pool(num_proc) as pool:
            results = list(_progress(pool.imap(_inspect, paths, chunksize=32), bar))
    else:
        results = list(_progress(map(_inspect, paths), bar))
    bar.close()
    for path, reason in results:
        if reason is not None:
            record = by_path[path]
            problems.append(Problem("unreadable_image", path, f"{reason} (labelled at {record.where})", record.image))
    return problems


def _progress(results, bar):
    for result in results:
        bar.update()
        yield result
