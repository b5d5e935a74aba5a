"""Whole builds from each source's fixture: the written dataset, its card, bad input, and the output folder."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from retina_vqa.build_dataset import InputError, build_dataset
from retina_vqa.data.layout import image_row_features
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.questions import DIAGNOSIS_ANSWERS, MACULAR_OEDEMA_ANSWERS, QUESTION_TYPES, answer_for
from retina_vqa.synthetic import dataset_features as synthetic_features

from .helpers import (
    CSV_COLUMNS,
    MAKERS,
    fundus_image,
    make_aptos,
    make_csv,
    make_ddr,
    make_eyepacs,
    make_eyepacs_photos,
    make_idrid,
    make_messidor2,
    write_csv,
)

NOTEBOOK_TYPES = ("modality", "abnormality", "diagnosis", "blindness", "cause")


def _build(fixture, source, output_dir, **overrides) -> datasets.DatasetDict:
    if source == "csv":
        overrides = {**CSV_COLUMNS, **overrides}
    build_dataset(fixture.options(source, output_dir, **overrides))
    return load_dataset_dir(str(output_dir))


def _rows(dataset_dict: datasets.DatasetDict) -> list[dict]:
    return [row for split in dataset_dict.values() for row in split.remove_columns("image")]


def _digest(dataset_dict: datasets.DatasetDict) -> str:
    digest = hashlib.sha256()
    for split in dataset_dict:
        for column in dataset_dict[split].data.table.columns:
            digest.update(repr(column.to_pylist()).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("source", list(MAKERS))
def test_each_source_builds_the_synthetic_format_with_answers_from_the_grade(tmp_path, source):
    fixture = MAKERS[source](tmp_path / "in")
    built = _build(fixture, source, tmp_path / "out")
    assert list(built) == ["train", "validation", "test"]
    assert all(built[s].num_rows > 0 for s in built)
    # Stored as the synthetic generator stores its rows (image rows), read as question rows like the synthetic set.
    stored = datasets.load_from_disk(str(tmp_path / "out"))["train"].features
    synthetic_stored = image_row_features(synthetic_features())
    assert {n: f for n, f in stored.items() if n in synthetic_stored} == {
        n: f for n, f in synthetic_stored.items() if n in stored
    }
    assert isinstance(stored["question"], datasets.List)
    features = built["train"].features
    synthetic = synthetic_features()
    for name in ("question", "answer", "image_id", "question_type", "answer_type", "grade", "laterality"):
        if name in features:
            assert features[name] == synthetic[name], name
    assert ("laterality" in features) == (source in ("eyepacs", "csv"))
    assert ("patient_id" in features) == (source in ("eyepacs", "csv"))
    rows = _rows(built)
    gradable = {k: g for k, g in fixture.grades.items() if g is not None}
    assert {r["image_id"] for r in rows} == set(gradable)  # every gradable image once, ungradable left out
    for row in rows:
        grade = gradable[row["image_id"]]
        assert row["grade"] == grade
        if row["question_type"] in NOTEBOOK_TYPES:
            # The notebook's five questions: the synthetic set's wording and answers.
            assert row["question"] == QUESTION_TYPES[row["question_type"]]["question"]
            assert row["answer"] == answer_for(row["question_type"], grade, "left", "good", [], 0)
        if row["question_type"] == "referable_dr":
            assert row["answer"] == ("yes" if grade >= 2 else "no")
        assert row["answer_type"] == "closed" or row["question_type"] in ("blindness", "cause")
    types = {r["question_type"] for r in rows}
    assert set(NOTEBOOK_TYPES) | {"referable_dr"} <= types
    assert ("macular_oedema" in types) == (source in ("idrid", "messidor2"))
    assert ("laterality" in types) == (source in ("eyepacs", "csv"))
    assert "quality" not in types and not types & {"microaneurysms", "haemorrhages", "haemorrhage_quadrants"}
    diagnosis = {r["answer"] for r in rows if r["question_type"] == "diagnosis"}
    assert diagnosis <= set(DIAGNOSIS_ANSWERS)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"--source {source}" in card and "## Images per grade" in card


def test_eyepacs_keeps_both_eyes_of_a_patient_in_one_split_and_answers_the_eye(tmp_path):
    built = _build(make_eyepacs(tmp_path / "in", patients=30), "eyepacs", tmp_path / "out")
    split_of_patient: dict[str, set] = {}
    for split in built:
        for row in built[split].remove_columns("image"):
            split_of_patient.setdefault(row["patient_id"], set()).add(split)
            if row["question_type"] == "laterality":
                assert row["answer"] == f"{row['laterality']} eye" and row["image_id"].endswith(row["laterality"])
    assert len(split_of_patient) == 30 and all(len(s) == 1 for s in split_of_patient.values())
    assert len(set().union(*split_of_patient.values())) == 3


def test_ddr_and_idrid_keep_the_source_splits(tmp_path):
    ddr = make_ddr(tmp_path / "ddr")
    built = _build(ddr, "ddr", tmp_path / "ddr-out")
    for split, prefix in (("train", "000-"), ("validation", "001-"), ("test", "002-")):
        assert {i[:4] for i in built[split]["image_id"]} == {prefix}
    idrid = make_idrid(tmp_path / "idrid", n_train=10, n_test=5)
    built = _build(idrid, "idrid", tmp_path / "idrid-out", validation_fraction=0.2)
    assert set(built["test"]["image_id"]) == {f"test/IDRiD_{i:03d}" for i in range(1, 6)}
    assert len(set(built["validation"]["image_id"])) == 2  # 0.2 of the 10 training images
    oedema = {(r["image_id"], r["answer"]) for r in _rows(built) if r["question_type"] == "macular_oedema"}
    assert ("train/IDRiD_001", MACULAR_OEDEMA_ANSWERS["low"]) in oedema  # risk 1
    assert ("train/IDRiD_002", MACULAR_OEDEMA_ANSWERS["high"]) in oedema  # risk 2
    assert ("IDRiD_006", MACULAR_OEDEMA_ANSWERS["none"]) in oedema  # risk 0


def test_ungradable_images_are_left_out_and_counted_or_kept_with_the_quality_question(tmp_path):
    fixture = make_messidor2(tmp_path / "in")
    built = _build(fixture, "messidor2", tmp_path / "out")
    assert len({r["image_id"] for r in _rows(built)}) == 10
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| ungradable | 2 | the source grades the image ungradable" in card
    kept = _build(fixture, "messidor2", tmp_path / "kept", keep_ungradable=True)
    rows = _rows(kept)
    ungradable = {r["image_id"] for r in rows if r["grade"] == -1}
    assert ungradable == {k for k, g in fixture.grades.items() if g is None}
    assert {r["question_type"] for r in rows if r["grade"] == -1} == {"modality", "quality"}
    quality = {r["image_id"]: r["answer"] for r in rows if r["question_type"] == "quality"}
    assert len(quality) == 12 and {quality[i] for i in ungradable} == {"no"}
    assert sum(a == "yes" for a in quality.values()) == 10


def _bad_eyepacs(root):
    """An EyePACS layout with one of each problem: a missing image, an unlabelled file, a truncated JPEG, an
    unknown grade and a duplicated row."""
    fixture = make_eyepacs(root, patients=6)
    images = fixture.images[0]
    (images / "6_right.jpeg").write_bytes((images / "6_right.jpeg").read_bytes()[:-150])
    (images / "stray_left.jpeg").write_bytes((images / "3_left.jpeg").read_bytes())
    rows = [[k, g] for k, g in fixture.grades.items()] + [["99_left", 2], ["3_left", 1]]
    rows[4][1] = "4+"  # 9_left
    write_csv(fixture.labels[0], ["image", "level"], rows)
    return fixture


def test_bad_input_is_reported_at_once_and_nothing_is_written(tmp_path):
    fixture = _bad_eyepacs(tmp_path / "in")
    output = tmp_path / "out"
    with pytest.raises(InputError) as error:
        build_dataset(fixture.options("eyepacs", output))
    message = str(error.value)
    for expected in (
        "5 problem(s) in the input",
        "unknown_value (1)",
        "trainLabels.csv line 6: level = '4+'",
        "duplicate_label (1)",
        "trainLabels.csv line 15: 3_left.jpeg is also labelled at trainLabels.csv line 2",
        "missing_image (1)",
        "trainLabels.csv line 14: 99_left.jpeg is not in",
        "unlabelled_image (1)",
        "stray_left.jpeg: no label row names this file",
        "unreadable_image (1)",
        "6_right.jpeg: the image data cannot be decoded",
        "fix: ",
        f"Nothing was written to {output}",
        "--skip_invalid",
    ):
        assert expected in message, expected
    assert error.value.report.counts() == {
        "unknown_value": 1,
        "duplicate_label": 1,
        "missing_image": 1,
        "unlabelled_image": 1,
        "unreadable_image": 1,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no partial folder


def test_skip_invalid_drops_bad_input_and_counts_it_in_the_card(tmp_path):
    fixture = _bad_eyepacs(tmp_path / "in")
    built = _build(fixture, "eyepacs", tmp_path / "out", skip_invalid=True)
    ids = {r["image_id"] for r in _rows(built)}
    assert ids == {f"{p}_{e}" for p in (3, 6, 12, 15, 18) for e in ("left", "right")} - {"6_right"} | {"9_right"}
    grades = {r["image_id"]: r["grade"] for r in _rows(built)}
    assert grades["3_left"] == fixture.grades["3_left"]  # the first of the duplicated rows wins
    card = (tmp_path / "out" / "README.md").read_text()
    for kind in ("unknown_value", "duplicate_label", "missing_image", "unlabelled_image", "unreadable_image"):
        assert f"| {kind} | 1 |" in card, kind


def test_an_image_that_fails_only_when_decoded_is_reported_too(tmp_path):
    fixture = make_messidor2(tmp_path / "in", n=6)
    png = fixture.images[0] / "20051020_43801_0100_PP.png"
    data = bytearray(png.read_bytes())
    data[60:200] = b"\x00" * 140  # pixel data broken, header and end marker intact: the quick check passes
    png.write_bytes(bytes(data))
    with pytest.raises(InputError, match="failed to decode while writing") as error:
        build_dataset(fixture.options("messidor2", tmp_path / "out"))
    assert error.value.report.counts() == {"unreadable_image": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    built = _build(fixture, "messidor2", tmp_path / "out", skip_invalid=True)
    assert "20051020_43801_0100_PP" not in {r["image_id"] for r in _rows(built)}
    assert "| unreadable_image | 1 |" in (tmp_path / "out" / "README.md").read_text()


def test_same_seed_same_bytes_for_any_num_proc_other_seed_other_split(tmp_path):
    fixture = make_eyepacs(tmp_path / "in", patients=40)
    one = _build(fixture, "eyepacs", tmp_path / "one", seed=1, paraphrase=True)
    two = _build(fixture, "eyepacs", tmp_path / "two", seed=1, paraphrase=True, num_proc=2)
    assert _digest(one) == _digest(two)
    other = _build(fixture, "eyepacs", tmp_path / "other", seed=2, paraphrase=True)
    assert set(other["test"]["image_id"]) != set(one["test"]["image_id"])
    # Paraphrases are drawn per image and seed: moving images between splits does not change their wording.
    resplit = _build(fixture, "eyepacs", tmp_path / "resplit", seed=1, paraphrase=True, validation_fraction=0.3)
    assert set(resplit["validation"]["image_id"]) != set(one["validation"]["image_id"])
    wording = {(r["image_id"], r["question_type"]): r["question"] for r in _rows(one)}
    assert {(r["image_id"], r["question_type"]): r["question"] for r in _rows(resplit)} == wording
    assert len({q for (_, t), q in wording.items() if t == "diagnosis"}) == 4
    plain = _build(fixture, "eyepacs", tmp_path / "plain", seed=1)
    assert {r["question"] for r in _rows(plain) if r["question_type"] == "referable_dr"} == {
        "is there referable diabetic retinopathy?"
    }


def test_images_are_downsized_or_kept(tmp_path):
    fixture = make_eyepacs(tmp_path / "in", patients=3)
    big = fixture.images[0] / "3_left.jpeg"
    fundus_image(7, (400, 300)).save(big, quality=90)

    def stored(output_dir):
        built = datasets.load_from_disk(str(output_dir))  # image rows: one stored image per row
        raw = datasets.concatenate_datasets(list(built.values())).cast_column("image", datasets.Image(decode=False))
        return {row["image_id"]: row["image"]["bytes"] for row in raw}

    _build(fixture, "eyepacs", tmp_path / "out", max_image_side=100)
    images = stored(tmp_path / "out")
    assert Image.open(io.BytesIO(images["3_left"])).size == (100, 75)
    assert images["3_right"] == (fixture.images[0] / "3_right.jpeg").read_bytes()  # 80x60: stored as it was
    _build(fixture, "eyepacs", tmp_path / "kept", keep_original=True)
    assert stored(tmp_path / "kept")["3_left"] == big.read_bytes()


def test_output_folder_is_replaced_only_with_overwrite_and_leftovers_are_cleared(tmp_path):
    fixture = make_eyepacs(tmp_path / "in", patients=3)
    output = tmp_path / "out"
    output.mkdir()
    (output / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="--overwrite"):
        build_dataset(fixture.options("eyepacs", output))
    # --overwrite replaces an earlier build only, never a folder of other files.
    with pytest.raises(ValueError, match="no earlier build"):
        build_dataset(fixture.options("eyepacs", output, overwrite=True))
    assert (output / "mine.txt").read_text() == "keep me"
    (output / "mine.txt").unlink()
    _build(fixture, "eyepacs", output)
    (output / "train" / "stale.arrow").write_text("from the earlier build")
    leftover = tmp_path / ".out.partial"
    leftover.mkdir()
    (leftover / "half.arrow").write_text("from an interrupted build")
    _build(fixture, "eyepacs", output, overwrite=True)
    assert not (output / "train" / "stale.arrow").exists() and (output / "dataset_dict.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_an_output_folder_holding_the_inputs_is_refused_and_the_inputs_survive(tmp_path):
    """--overwrite on the folder that holds the label file and images would have deleted them."""
    fixture = make_aptos(tmp_path / "data")
    _build(fixture, "aptos", tmp_path / "data" / "vqa")  # inside is fine: next to the inputs, not above them
    (tmp_path / "data" / "dataset_dict.json").write_text("{}")  # even when it looks like an earlier build
    with pytest.raises(ValueError, match="holds the input"):
        build_dataset(fixture.options("aptos", tmp_path / "data", overwrite=True))
    assert all(path.exists() for path in [*fixture.labels, *fixture.images])
    assert len(list(fixture.images[0].iterdir())) == 10


def test_images_no_asked_question_applies_to_are_left_out_and_counted(tmp_path):
    """EyePACS names without _left/_right answer no laterality question: with only that type asked, no row."""
    fixture = make_eyepacs(tmp_path / "in", patients=4)
    (fixture.images[0] / "3_left.jpeg").rename(fixture.images[0] / "99.jpeg")
    labels = fixture.labels[0]
    labels.write_text(re.sub(r"(?m)^3_left,", "99,", labels.read_text()))
    result = build_dataset(fixture.options("eyepacs", tmp_path / "out", question_types=["laterality"]))
    assert result.dropped["no_questions"] == 1
    assert sum(stats.images for stats in result.stats.values()) == 7
    built = load_dataset_dir(str(tmp_path / "out"))
    assert "99" not in {row["image_id"] for split in built.values() for row in split}
    assert "none of the asked question types" in (tmp_path / "out" / "README.md").read_text()


def test_csv_column_names_are_read_as_the_header_is_stripped(tmp_path):
    fixture = make_csv(tmp_path / "in")
    columns = {**CSV_COLUMNS, "grade_column": " dr_grade ", "image_column": "file "}
    built = _build(fixture, "csv", tmp_path / "out", **columns)
    assert sum(split.num_rows for split in built.values()) > 0


def test_written_layout_is_what_save_to_disk_writes_in_any_number_of_shards(tmp_path, monkeypatch):
    import json

    from retina_vqa.build_dataset import writer

    fixture = make_eyepacs(tmp_path / "in", patients=6)
    _build(fixture, "eyepacs", tmp_path / "out")
    built = datasets.load_from_disk(str(tmp_path / "out"))  # as stored: image rows
    built.save_to_disk(str(tmp_path / "resaved"))
    for split in built:
        ours, theirs = tmp_path / "out" / split, tmp_path / "resaved" / split
        assert (ours / "dataset_info.json").read_text() == (theirs / "dataset_info.json").read_text()
        state, reference = (json.loads((d / "state.json").read_text()) for d in (ours, theirs))
        assert state["_data_files"] == reference["_data_files"] == [{"filename": "data-00000-of-00001.arrow"}]
        assert {k: v for k, v in state.items() if k != "_fingerprint"} == {
            k: v for k, v in reference.items() if k != "_fingerprint"
        }
    # Small batches, a new shard after every batch: the same rows in the same order.
    monkeypatch.setattr(writer, "BATCH_ROWS", 2)
    monkeypatch.setattr(writer, "SHARD_BYTES", 1)
    _build(fixture, "eyepacs", tmp_path / "sharded")
    sharded = datasets.load_from_disk(str(tmp_path / "sharded"))
    files = sorted(p.name for p in (tmp_path / "sharded" / "train").glob("data-*.arrow"))
    assert len(files) > 3 and files[-1] == f"data-{len(files) - 1:05d}-of-{len(files):05d}.arrow"
    assert _digest(sharded) == _digest(built)


def _outside_row(root, source, how):
    """One source's fixture whose label file gains a row naming a file outside --images: by '..', by an
    absolute path, or through a symlink in the folder that points out of it. The label line, row's name."""
    fixture = MAKERS[source](root)
    secret = root / "outside" / "secret.jpeg"
    secret.parent.mkdir()
    fundus_image(99).save(secret, quality=90)
    if how == "symlink":
        (fixture.images[0] / "link.jpeg").symlink_to(secret)
        name = "link.jpeg"
    else:
        name = str(secret) if how == "absolute" else os.path.relpath(secret, fixture.images[0])  # "../.."
    labels = fixture.labels[0]
    text = labels.read_text()
    row = {"ddr": f"{name} 2\n", "eyepacs": f"{name.removesuffix('.jpeg')},2\n", "csv": f"{name},2,P99,OD\n"}
    labels.write_text(text + row[source])
    return fixture, f"{labels.name} line {text.count(chr(10)) + 1}", name


@pytest.mark.parametrize(
    "source, how",
    [("csv", "dotdot"), ("csv", "absolute"), ("csv", "symlink"), ("ddr", "dotdot"), ("eyepacs", "symlink")],
)
def test_image_paths_leading_outside_the_images_folder_are_refused_or_skipped(tmp_path, source, how):
    fixture, where, name = _outside_row(tmp_path / "in", source, how)
    overrides = CSV_COLUMNS if source == "csv" else {}
    with pytest.raises(InputError) as error:
        build_dataset(fixture.options(source, tmp_path / "out", **overrides))
    assert error.value.report.counts() == {"outside_images_folder": 1}
    message = str(error.value)
    assert f"{where}: {name}" in message
    said = "is an absolute path, not a path inside" if how == "absolute" else "outside"
    assert f"{said} {fixture.images[0]}" in message
    assert "--skip_invalid" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    built = _build(fixture, source, tmp_path / "out", skip_invalid=True)
    assert {r["image_id"] for r in _rows(built)} == {k for k, g in fixture.grades.items() if g is not None}
    assert "| outside_images_folder | 1 |" in (tmp_path / "out" / "README.md").read_text()


def test_a_symlink_inside_the_images_folder_pointing_inside_builds(tmp_path):
    fixture = make_csv(tmp_path / "in", patients=4)
    photos = fixture.images[0]
    (photos / "originals").mkdir()
    (photos / "p00od.jpg").rename(photos / "originals" / "p00od.jpg")
    (photos / "p00od.jpg").symlink_to(Path("originals") / "p00od.jpg")
    built = _build(fixture, "csv", tmp_path / "out")
    assert {r["image_id"] for r in _rows(built)} == set(fixture.grades)


def test_every_question_type_costs_about_the_disk_of_one(tmp_path):
    """EyePACS-shaped photographs: image rows store each image once, so all seven question types take at most
    1.3x the disk of one; the RetinaVQA layout (question rows) pays for each question type again."""
    fixture = make_eyepacs_photos(tmp_path / "in")

    def stored_bytes(name, **overrides):
        build_dataset(fixture.options("eyepacs", tmp_path / name, max_image_side=384, **overrides))
        return sum(f.stat().st_size for f in (tmp_path / name).rglob("data-*.arrow"))

    one = stored_bytes("one", question_types=["diagnosis"])
    every = stored_bytes("every")
    per_question = stored_bytes("question_rows", layout="question_rows")
    rows = _rows(load_dataset_dir(str(tmp_path / "every")))
    assert len({r["question_type"] for r in rows}) == 7
    assert {r["question_type"] for r in _rows(load_dataset_dir(str(tmp_path / "one")))} == {"diagnosis"}
    assert every <= 1.3 * one
    assert per_question >= 6 * every
    # Both layouts hold the same question rows.
    assert rows == _rows(load_dataset_dir(str(tmp_path / "question_rows")))
