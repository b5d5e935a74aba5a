"""Images stored once: question rows that point into a table of images instead of carrying their own copy.

A dataset in image rows (`data.layout`) holds each photograph once. The question rows made from it
(`layout.expand_questions`) hold, in their image column, a `datasets` Image value without bytes whose path is a
reference ``retina-vqa-image://<table>/<row>#<sha1>``: the image table (registered here by its fingerprint),
the image's row in it and the SHA-1 of its bytes. `data.images` resolves references wherever it opens an
image (`load_image`, `probe_image`) and reads the SHA-1 from the reference (`image_key`) without touching the
bytes, so the collator, validation, answering and pictures read image rows and question rows alike.

The tables live in this process (memory-mapped Arrow, nothing is copied): they are registered when the data is
loaded, and worker processes forked afterwards (data loader workers, ``datasets.map`` processes) inherit them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["SCHEME", "UnknownImageTable", "is_reference", "read_reference", "reference", "reference_sha1", "register"]

SCHEME = "retina-vqa-image://"
# token -> the image column of the table, as a pyarrow ChunkedArray of {"bytes", "path"} structs.
_TABLES: dict[str, Any] = {}


class UnknownImageTable(LookupError):
    """A reference names a table this process has not loaded."""


def register(images: Dataset, image_column: str) -> str:
    """Keep the image column of ``images`` (one image per row) for references; returns the table's token (its
    fingerprint: the same table loaded again gets the same token, so cached question rows stay valid)."""
    if images._indices is not None:  # a selection: references count rows of the table as stored
        images = images.flatten_indices()
    token = images._fingerprint
    if token not in _TABLES:
        _TABLES[token] = images.data.column(image_column)
    return token


def reference(token: str, row: int, sha1: str) -> str:
    return f"{SCHEME}{token}/{row}#{sha1}"


def is_reference(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def _parse(path: str) -> tuple[str, int, str]:
    body, _, sha1 = path[len(SCHEME) :].partition("#")
    token, _, row = body.rpartition("/")
    return token, int(row), sha1


def reference_sha1(path: str) -> str | None:
    """The SHA-1 a reference carries, or None where it carries none."""
    return _parse(path)[2] or None


def read_reference(path: str) -> dict[str, Any]:
    """The stored image value (``{"bytes": ..., "path": ...}``) a reference points to."""
    token, row, _ = _parse(path)
    column = _TABLES.get(token)
    if column is None:
        raise UnknownImageTable(
            f"image table {token} is not loaded in this process: question rows that reference images are made by "
            "retina_vqa.data.loading (load_dataset_dir / load_raw_datasets), which loads the table; load the data "
            "through it, or use a start method that forks (the default on Linux) for worker processes"
        )
    if not 0 <= row < len(column):
        raise UnknownImageTable(f"row {row} is outside image table {token} ({len(column)} images)")
    return column[row].as_py()
