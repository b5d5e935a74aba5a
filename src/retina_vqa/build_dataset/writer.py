"""Writing the dataset: streamed, in parallel, into a temporary folder that becomes the output in one rename.

This module owns:

* `partial_dir`: where a build writes, ``.<name>.partial`` next to the output (same file system, so the final
  rename is atomic). A leftover of an interrupted build is removed first: the build restarts cleanly with the
  same command. The output folder itself is never half-written: it appears complete or not at all.
* `write_splits`: each split written in ``save_to_disk`` layout. ``num_proc`` worker processes decode, resize
  and encode the images (`images.encode_image`), a few per worker in flight, results taken in record order;
  the main process makes each image's row (image rows, `retina_vqa.data.layout`: the image stored once, its
  questions and answers as lists) and appends them to Arrow shards (IPC stream files of at most 500 MB, as
  ``save_to_disk`` writes them) in small record batches. Memory is bounded by the images in
  flight and one record batch, whatever the number of images, and the rows come out in the same order for
  any ``num_proc``. The Arrow files are written once, straight into the output layout: going through
  ``Dataset.from_generator`` and ``save_to_disk`` would write every image twice and spend about as long
  re-encoding the image column in Python as decoding the photographs (measured: 7-14 ms per image each).
  The JSON files next to them (``state.json``, ``dataset_info.json``) are the ones ``datasets`` itself
  writes for these features (an empty dataset saved with ``save_to_disk``), with the shard list filled in;
  the finished folder is read back with ``load_from_disk`` before it is published. An image that fails to
  decode here (corrupt in a way the up-front check cannot see) is reported as an ``unreadable_image`` problem.
* `publish`: the rename into place (an existing output is replaced only with ``--overwrite``).
* `SplitStats`: what was written, counted on the way, for the dataset card.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import multiprocessing
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.images import ImageLoadError
from .images import encode_image
from .records import LabelRecord, Problem
from .rows import dataset_features, image_row, image_row_features, rows_for

__all__ = ["SplitStats", "WriteSettings", "check_output_dir", "partial_dir", "publish", "write_splits"]

logger = logging.getLogger(__name__)

# One Arrow record batch holds at most this many images or bytes. Every row holds its image, so this bounds the
# write buffer (~10 MB of 1024 px JPEGs) and keeps a batch's binary column far below Arrow's 2 GB limit even
# with --keep_original on huge files.
BATCH_ROWS = 16
BATCH_BYTES = 64 * 2**20
# A new shard file starts past this size (datasets' own default for save_to_disk).
SHARD_BYTES = 500 * 2**20
# Images queued per worker: enough to keep every worker busy, few enough that results never pile up.
IN_FLIGHT_PER_PROCESS = 4


@dataclass(frozen=True)
class WriteSettings:
    """Everything that decides the bytes of the output besides the records."""

    question_types: tuple[str, ...]
    seed: int
    paraphrase: bool
    with_laterality: bool
    with_patient: bool
    max_image_side: int
    keep_original: bool
    jpeg_quality: int
    # Image rows (each image once, questions as lists) or question rows (one image copy per question).
    image_rows: bool = True


@dataclass
class SplitStats:
    images: int = 0
    rows: int = 0
    grades: collections.Counter = field(default_factory=collections.Counter)
    question_types: collections.Counter = field(default_factory=collections.Counter)
    answers: collections.Counter = field(default_factory=collections.Counter)
    patients: set = field(default_factory=set)
    # Images left out because none of the asked question types applies to their labels (e.g. --question_types
    # laterality for an image whose name says no eye): they would be encoded into no row.
    without_questions: int = 0

    def add(self, record: LabelRecord, rows: Sequence[dict[str, Any]]) -> None:
        self.images += 1
        self.rows += len(rows)
        self.grades[record.grade] += 1
        if record.patient_id:
            self.patients.add(record.patient_id)
        for row in rows:
            self.question_types[row["question_type"]] += 1
            self.answers[(row["question_type"], row["answer"])] += 1


def check_output_dir(output_dir: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Raise ``ValueError`` unless ``output_dir`` may be written: absent, empty, or an earlier build replaceable with
    ``overwrite``. Never a folder that holds the ``inputs`` (label files, image folders): replacing it would delete
    the data the build reads."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; pass a folder path")
    resolved = output_dir.resolve()
    for path in inputs:
        source = Path(path).resolve()
        if source == resolved or resolved in source.parents:
            raise ValueError(
                f"--output_dir {output_dir} holds the input {path}: the build would replace the data it reads. "
                "Choose an output folder outside the label files and image folders."
            )
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise ValueError(
                f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace it or choose another "
                "folder"
            )
        cwd = Path.cwd().resolve()
        if resolved in {Path("/").resolve(), Path.home().resolve(), cwd, *cwd.parents}:
            raise ValueError(f"--output_dir {output_dir} is the working, home or root folder; refusing to replace it")
        if not (output_dir / "dataset_dict.json").is_file():
            raise ValueError(
                f"--output_dir {output_dir} is not empty and holds no earlier build (no dataset_dict.json): "
                "--overwrite only replaces a dataset folder. Remove it yourself or choose another folder."
            )


def partial_dir(output_dir: Path) -> Path:
    """The build's working folder next to ``output_dir``, emptied of any interrupted build's leftovers."""
    output_dir = output_dir.absolute()
    path = output_dir.parent / f".{output_dir.name}.partial"
    if path.exists():
        logger.warning("Removing %s, left by an interrupted build", path)
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def publish(dataset_dir: Path, output_dir: Path, overwrite: bool) -> None:
    """Move the finished ``dataset_dir`` to ``output_dir`` (same file system: a rename, never a copy)."""
    output_dir = output_dir.absolute()
    replaced = None
    if output_dir.exists():
        if not overwrite and (output_dir.is_file() or any(output_dir.iterdir())):
            raise ValueError(f"--output_dir {output_dir} appeared during the build; pass --overwrite to replace it")
        replaced = output_dir.parent / f".{output_dir.name}.replaced"
        if replaced.exists():
            shutil.rmtree(replaced)
        output_dir.rename(replaced)
    try:
        dataset_dir.rename(output_dir)
    except OSError:
        if replaced is not None:  # the earlier build goes back where it was
            replaced.rename(output_dir)
        raise
    if replaced is not None:
        shutil.rmtree(replaced)


def _convert(task: tuple[str, int, bool, int]) -> tuple[bytes | None, str | None]:
    path, max_side, keep_original, jpeg_quality = task
    try:
        return encode_image(path, max_side, keep_original, jpeg_quality), None
    except ImageLoadError as error:
        return None, error.reason


def _ordered_map(pool, function: Callable, items: Iterable, in_flight: int) -> Iterator:
    """``map(function, items)`` on ``pool`` (or here, without one), in order, at most ``in_flight`` queued."""
    if pool is None:
        yield from map(function, items)
        return
    iterator = iter(items)
    pending = collections.deque(pool.apply_async(function, (item,)) for item in itertools.islice(iterator, in_flight))
    while pending:
        result = pending.popleft().get()
        pending.extend(pool.apply_async(function, (item,)) for item in itertools.islice(iterator, 1))
        yield result


class _ShardWriter:
    """One split's rows as Arrow IPC stream shards ``part-NNNNN.arrow`` in ``split_dir``, batched and rolled over."""

    def __init__(self, split_dir: Path, features, image_rows: bool = True) -> None:
        import pyarrow as pa

        self.image_rows = image_rows
        self.pa = pa
        self.split_dir = split_dir
        self.schema = features.arrow_schema
        self.image_fields = list(self.schema.field("image").type)
        self.files: list[Path] = []
        self.sink = self.stream = None
        self.shard_bytes = 0
        self.pending: list[tuple[bytes, dict[str, Any]]] = []
        self.pending_bytes = 0
        split_dir.mkdir(parents=True)

    def add(self, data: bytes, rows: Sequence[dict[str, Any]]) -> None:
        """One image and its question rows, written as one image row (or as question rows, each with the image)."""
        if self.image_rows:
            self.pending.append((data, image_row(rows)))
            self.pending_bytes += len(data)
        else:
            self.pending.extend((data, row) for row in rows)
            self.pending_bytes += len(data) * len(rows)
        if len(self.pending) >= BATCH_ROWS or self.pending_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        pa = self.pa
        if not self.pending:
            return
        if self.stream is None or self.shard_bytes >= SHARD_BYTES:
            self._close_shard()
            path = self.split_dir / f"part-{len(self.files):05d}.arrow"
            self.files.append(path)
            self.sink = pa.OSFile(str(path), "wb")
            self.stream = pa.ipc.new_stream(self.sink, self.schema)
            self.shard_bytes = 0
        n = len(self.pending)
        images = pa.StructArray.from_arrays(
            [pa.array([d for d, _ in self.pending], pa.binary()), pa.nulls(n, pa.string())], fields=self.image_fields
        )
        arrays = [images] + [
            pa.array([row[f.name] for _, row in self.pending], type=f.type) for f in self.schema if f.name != "image"
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self.stream.write_batch(batch)
        self.shard_bytes += batch.nbytes
        self.pending, self.pending_bytes = [], 0

    def _close_shard(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.sink.close()
            self.stream = self.sink = None

    def close(self) -> list[Path]:
        """Flush, close, and return the shard files (one empty shard for an empty split, as datasets writes)."""
        self._flush()
        if not self.files:
            path = self.split_dir / "part-00000.arrow"
            self.files.append(path)
            with self.pa.OSFile(str(path), "wb") as sink, self.pa.ipc.new_stream(sink, self.schema):
                pass
        self._close_shard()
        return self.files


def _write_split_metadata(split_dir: Path, split: str, features, parts: Sequence[Path], fingerprint: str) -> None:
    """Name the shards as save_to_disk does and add its state.json and dataset_info.json."""
    import datasets

    # datasets writes its own JSON for these features; only the shard list (and fingerprint) is ours.
    empty = datasets.Dataset.from_dict(
        {name: [] for name in features}, features=features, split=datasets.NamedSplit(split)
    )
    bars_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar for saving zero rows is noise
    try:
        empty.save_to_disk(str(split_dir), num_shards=1)
    finally:
        if bars_on:
            datasets.enable_progress_bars()
    (split_dir / "data-00000-of-00001.arrow").unlink()
    names = [f"data-{i:05d}-of-{len(parts):05d}.arrow" for i in range(len(parts))]
    for part, name in zip(parts, names, strict=True):
        part.rename(split_dir / name)
    state_path = split_dir / "state.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    state["_data_files"] = [{"filename": name} for name in names]
    state["_fingerprint"] = fingerprint
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


def _fingerprint(split: str, records: Sequence[LabelRecord], settings: WriteSettings) -> str:
    digest = hashlib.sha256(json.dumps([split, repr(settings)]).encode())
    for record in records:
        digest.update(repr(record).encode())
    return digest.hexdigest()[:16]


def write_splits(
    splits: dict[str, list[LabelRecord]], work_dir: Path, settings: WriteSettings, num_proc: int, progress: bool
) -> tuple[Path, dict[str, SplitStats], list[Problem]]:
    """Write every split under ``work_dir / "dataset"`` in ``save_to_disk`` layout.

    Returns the dataset folder, the per-split counts and the images that failed to decode (left out).
    """
    import datasets

    features = dataset_features(settings.with_laterality, settings.with_patient)
    if settings.image_rows:
        features = image_row_features(features)
    dataset_dir = work_dir / "dataset"
    dataset_dir.mkdir()
    stats: dict[str, SplitStats] = {}
    problems: list[Problem] = []
    s = settings
    bar = tqdm(total=sum(map(len, splits.values())), desc="Writing images", unit="img", disable=not progress)
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = context.Pool(num_proc) if num_proc > 1 else None
    try:
        for split, records in splits.items():
            stats[split] = SplitStats()
            writer = _ShardWriter(dataset_dir / split, features, settings.image_rows)
            tasks = ((r.path, s.max_image_side, s.keep_original, s.jpeg_quality) for r in records)
            results = _ordered_map(pool, _convert, tasks, IN_FLIGHT_PER_PROCESS * num_proc)
            for record, (data, error) in zip(records, results, strict=True):
                bar.update()
                if error is not None:
                    detail = f"{error} (labelled at {record.where})"
                    problems.append(Problem("unreadable_image", str(record.path), detail, record.image))
                    continue
                rows = rows_for(record, s.question_types, s.seed, s.paraphrase, s.with_laterality, s.with_patient)
                if not rows:
                    stats[split].without_questions += 1
                    continue
                stats[split].add(record, rows)
                writer.add(data, rows)
            parts = writer.close()
            _write_split_metadata(dataset_dir / split, split, features, parts, _fingerprint(split, records, s))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    # The file DatasetDict.save_to_disk writes next to the splits.
    (dataset_dir / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}), encoding="utf-8")
    reloaded = datasets.load_from_disk(str(dataset_dir))
    written = {split: reloaded[split].num_rows for split in reloaded}
    expected = {split: stats[split].images if s.image_rows else stats[split].rows for split in splits}
    if written != expected or any(reloaded[split].features != features for split in reloaded):
        raise RuntimeError(
            f"the dataset read back has rows {written} (expected {expected}) and features "
            f"{reloaded[next(iter(reloaded))].features}; nothing was published. The datasets library's save_to_disk "
            "layout may have changed: report this with your datasets version."
        )
    return dataset_dir, stats, problems
