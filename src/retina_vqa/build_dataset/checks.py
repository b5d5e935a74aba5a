"""Finding what is wrong with the input before anything is written.

This module owns:

* `ImageIndex`: the files of one images folder, found by the name a label file gives, by that name in any
  case (``IM0001.JPG`` labelled ``IM0001.jpg``), or by a unique stem (an APTOS folder converted to JPEG);
* `find_images`: label rows matched to files: images that are missing, files no label names, images labelled
  twice; image ids made unique where two label files reuse a name (IDRiD numbers its training and testing
  images from 1 each);
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
        self.files: dict[str, str] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                if entry.is_file():
                    self.files[entry.name] = entry.path
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
    claimed: dict[str, LabelRecord] = {}
    named_by_bad_rows = {
        index_of(p.images_dir).resolve(p.image) for p in bad_rows if p.image is not None and p.images_dir is not None
    }
    for record in records:
        path = index_of(record.images_dir).resolve(record.image)
        if path is None:
            problems.append(
                Problem("missing_image", record.where, f"{record.image} is not in {record.images_dir}", record.image)
            )
            continue
        first = claimed.get(path)
        if first is not None:
            conflict = ""
            if first.grade != record.grade:
                conflict = f" with another grade ({first.grade} there, {record.grade} here)"
            detail = f"{record.image} is also labelled at {first.where}{conflict}"
            problems.append(Problem("duplicate_label", record.where, detail, record.image))
            continue
        record.path = path
        claimed[path] = record
    for index in indexes.values():
        for name in sorted(index.files):
            path = index.files[name]
            if path not in claimed and path not in named_by_bad_rows:
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
