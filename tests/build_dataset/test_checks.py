"""Matching label rows to image files and the up-front image check."""

from __future__ import annotations

import io

import pytest

from retina_vqa.build_dataset import InputError, read_labels
from retina_vqa.build_dataset.checks import ImageIndex, check_images, find_images, inspect_image
from retina_vqa.build_dataset.images import encode_image
from retina_vqa.build_dataset.sources import CsvColumns

from .helpers import fundus_image, make_csv, make_eyepacs, make_idrid, write_csv


def _jpeg(seed: int = 0, size=(80, 60)) -> bytes:
    buffer = io.BytesIO()
    fundus_image(seed, size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    fundus_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_inspect_image_finds_truncated_empty_and_non_images(tmp_path):
    files = {
        "good.jpg": _jpeg(),
        "good.png": _png(),
        "padded.jpg": _jpeg() + b"\x00" * 10,  # zero padding after the end marker is common and harmless
        "trailer.jpg": _jpeg() + b"camera trailer " * 20,  # no end marker at the end: decoded to be sure
        "cut.jpg": _jpeg()[:-300],
        "cut.png": _png()[:-40],
        "empty.jpg": b"",
        "text.jpg": b"this is not an image at all",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: inspect_image(str(tmp_path / name)) for name in files}
    assert reasons["good.jpg"] is None and reasons["good.png"] is None
    assert reasons["padded.jpg"] is None and reasons["trailer.jpg"] is None
    assert "truncated" in reasons["cut.jpg"]
    assert reasons["cut.png"] is not None
    assert reasons["empty.jpg"] == "the file is empty (0 bytes)"
    assert reasons["text.jpg"].startswith("not a readable image")


def test_image_index_resolves_exact_name_any_case_and_unique_stem(tmp_path):
    for name in ("IM000001.JPG", "a.png", "b.jpg", "b.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    index = ImageIndex(tmp_path)
    assert sorted(index.files) == ["IM000001.JPG", "a.png", "b.jpg", "b.png"]  # not the text file
    assert index.resolve("IM000001.jpg") == str(tmp_path / "IM000001.JPG")
    assert index.resolve("a.jpeg") == str(tmp_path / "a.png")  # converted to another format: found by stem
    assert index.resolve("a") == str(tmp_path / "a.png")
    assert index.resolve("b") is None  # two files share the stem: no guess
    assert index.resolve("c.png") is None
    with pytest.raises(InputError, match="--images .* is not a folder"):
        ImageIndex(tmp_path / "missing")


def test_find_images_reports_missing_unlabelled_and_duplicates_once(tmp_path):
    fixture = make_eyepacs(tmp_path, patients=3)
    rows = [["3_left", 1], ["3_right", 2], ["6_left", 9], ["9_left", 1], ["99_left", 0], ["3_left", 4]]
    labels = write_csv(tmp_path / "trainLabels.csv", ["image", "level"], rows)
    records, problems = read_labels("eyepacs", [labels], fixture.images)
    problems += find_images(records, bad_rows=problems)
    found = {(p.kind, p.where) for p in problems}
    images = fixture.images[0]
    assert found == {
        ("unknown_value", "trainLabels.csv line 4"),  # 6_left: grade 9; its file is not "unlabelled" too
        ("missing_image", "trainLabels.csv line 6"),  # 99_left
        ("duplicate_label", "trainLabels.csv line 7"),  # 3_left again, with another grade
        ("unlabelled_image", str(images / "6_right.jpeg")),
        ("unlabelled_image", str(images / "9_right.jpeg")),
    }
    duplicate = next(p for p in problems if p.kind == "duplicate_label")
    assert "also labelled at trainLabels.csv line 2 with another grade (1 there, 4 here)" in duplicate.detail
    assert [r.path is not None for r in records] == [True, True, True, False, False]


def test_image_ids_repeated_across_label_files_get_their_split(tmp_path):
    fixture = make_idrid(tmp_path, n_train=3, n_test=2)
    records, _ = read_labels("idrid", fixture.labels, fixture.images)
    assert find_images(records) == []
    assert [r.image_id for r in records] == [
        "train/IDRiD_001",
        "train/IDRiD_002",
        "IDRiD_003",
        "test/IDRiD_001",
        "test/IDRiD_002",
    ]
    assert records[0].path != records[3].path


@pytest.mark.parametrize("num_proc", [1, 2])
def test_check_images_names_each_bad_file_and_its_label_row(tmp_path, num_proc):
    fixture = make_eyepacs(tmp_path, patients=40)  # > 64 files, so two processes really run
    images = fixture.images[0]
    (images / "3_right.jpeg").write_bytes((images / "3_right.jpeg").read_bytes()[:-200])
    (images / "60_left.jpeg").write_bytes(b"")
    records, _ = read_labels("eyepacs", fixture.labels, fixture.images)
    find_images(records)
    problems = check_images(records, num_proc=num_proc, progress=False)
    assert [(p.kind, p.where) for p in problems] == [
        ("unreadable_image", str(images / "3_right.jpeg")),
        ("unreadable_image", str(images / "60_left.jpeg")),
    ]
    assert "(labelled at trainLabels.csv line 3)" in problems[0].detail


def test_encode_image_downsizes_large_photos_and_keeps_small_files_as_they_are(tmp_path):
    from PIL import Image

    big, small = tmp_path / "big.jpg", tmp_path / "small.png"
    big.write_bytes(_jpeg(1, size=(640, 480)))
    small.write_bytes(_png(2))
    stored = Image.open(io.BytesIO(encode_image(str(big), max_side=100)))
    assert stored.format == "JPEG" and stored.size == (100, 75)
    assert encode_image(str(small), max_side=100) == small.read_bytes()  # within the side: no re-encoding
    assert encode_image(str(big), max_side=100, keep_original=True) == big.read_bytes()


def test_duplicates_are_found_by_the_file_a_path_resolves_to(tmp_path):
    fixture = make_csv(tmp_path, patients=2)
    photos = fixture.images[0]
    (photos / "x").mkdir()
    (photos / "alias.jpg").symlink_to("p00od.jpg")
    labels = fixture.labels[0]
    labels.write_text(labels.read_text() + "x/../p00od.jpg,1,P00,OD\nalias.jpg,1,P00,OD\n")
    records, problems = read_labels("csv", [labels], fixture.images, CsvColumns("file", "dr_grade", "patient", "eye"))
    problems += find_images(records, bad_rows=problems)
    assert [(p.kind, p.where) for p in problems] == [
        ("duplicate_label", "labels.csv line 6"),
        ("duplicate_label", "labels.csv line 7"),
    ]
    assert all("also labelled at labels.csv line 2" in p.detail for p in problems)
