"""The label-file readers: each source's real layout and quirks, bad values, and headers that do not fit."""

from __future__ import annotations

import pytest

from retina_vqa.build_dataset import CsvColumns, InputError, read_labels

from .helpers import CSV_COLUMNS, make_aptos, make_csv, make_ddr, make_eyepacs, make_idrid, make_messidor2, write_csv


def test_aptos_reads_id_code_and_diagnosis(tmp_path):
    fixture = make_aptos(tmp_path)
    records, problems = read_labels("aptos", fixture.labels, fixture.images)
    assert problems == []
    assert {r.image_id: r.grade for r in records} == fixture.grades
    assert all(r.image == f"{r.image_id}.png" and r.patient_id is None and r.laterality is None for r in records)
    assert records[0].where == "train.csv line 2"


def test_eyepacs_names_give_patient_and_eye(tmp_path):
    fixture = make_eyepacs(tmp_path, patients=3)
    records, _ = read_labels("eyepacs", fixture.labels, fixture.images)
    assert [(r.image, r.patient_id, r.laterality) for r in records[:2]] == [
        ("3_left.jpeg", "3", "left"),
        ("3_right.jpeg", "3", "right"),
    ]
    assert {r.image_id: r.grade for r in records} == fixture.grades


def test_idrid_header_with_trailing_space_blank_rows_and_splits_from_file_names(tmp_path):
    fixture = make_idrid(tmp_path, n_train=6, n_test=3)
    assert "Risk of macular edema ," in fixture.labels[0].read_text()  # the shipped header, trailing space kept
    records, problems = read_labels("idrid", fixture.labels, fixture.images)
    assert problems == []  # the blank rows and empty columns are no problem
    assert [r.source_split for r in records] == ["train"] * 6 + ["test"] * 3
    assert [r.macular_oedema for r in records[:3]] == ["low", "high", "none"]  # risk 1, 2, 0
    assert records[0].image == "IDRiD_001.jpg" and records[0].grade == 1


def test_messidor2_ungradable_rows_have_no_grade(tmp_path):
    fixture = make_messidor2(tmp_path, n=6)
    records, problems = read_labels("messidor2", fixture.labels, fixture.images)
    assert problems == []
    assert [r.grade for r in records] == [0, 1, 2, 3, None, None]
    assert records[0].image == "IM000000.JPG" and records[0].image_id == "IM000000"  # image_id has the extension
    # adjudicated_dme is binary: 1 = exudates within a disc diameter ("high"); 0 cannot tell no from low risk.
    assert [r.macular_oedema for r in records] == ["not_high", "high", "not_high", "high", None, None]


def test_ddr_headerless_lines_label_5_ungradable_and_splits_from_file_names(tmp_path):
    fixture = make_ddr(tmp_path, {"train": 3, "valid": 2, "test": 2})
    records, problems = read_labels("ddr", fixture.labels, fixture.images)
    assert problems == []
    assert [r.source_split for r in records] == ["train"] * 3 + ["validation"] * 2 + ["test"] * 2
    assert [r.grade for r in records] == [0, 1, None, 0, None, 0, None]
    assert records[0].image == "000-0000-000.jpg" and records[0].image_id == "000-0000-000"


def test_csv_maps_columns_patients_and_eye_codes(tmp_path):
    fixture = make_csv(tmp_path, patients=2)
    records, problems = read_labels("csv", fixture.labels, fixture.images, CsvColumns(**CSV_COLUMNS))
    assert problems == []
    assert [(r.image, r.patient_id, r.laterality, r.grade) for r in records] == [
        ("p00od", "P00", "right", 0),
        ("p00os", "P00", "left", 1),
        ("p01od", "P01", "right", 2),
        ("p01os", "P01", "left", 3),
    ]


def test_unknown_values_are_problems_naming_file_line_column_and_allowed_values(tmp_path):
    labels = write_csv(
        tmp_path / "trainLabels.csv",
        ["image", "level"],
        [["1_left", 0], ["1_right", 7], ["2_left", "moderate"], ["2_right", "3.0"]],
    )
    records, problems = read_labels("eyepacs", [labels], [tmp_path])
    assert [r.image_id for r in records] == ["1_left", "2_right"] and records[1].grade == 3
    assert [str(p) for p in problems] == [
        "trainLabels.csv line 3: level = '7'; expected an ICDR grade 0-4",
        "trainLabels.csv line 4: level = 'moderate'; expected an ICDR grade 0-4",
    ]
    assert {p.kind for p in problems} == {"unknown_value"} and problems[0].image == "1_right.jpeg"
    ddr = tmp_path / "train.txt"
    ddr.write_text("a.jpg 0\nb.jpg 6\nc.jpg\n")
    _, problems = read_labels("ddr", [ddr], [tmp_path])
    assert [(p.kind, p.where) for p in problems] == [
        ("unknown_value", "train.txt line 2"),
        ("malformed_line", "train.txt line 3"),
    ]


def test_header_mismatch_names_the_expected_columns_and_the_source_that_fits(tmp_path):
    aptos = make_aptos(tmp_path / "aptos", n=2)
    with pytest.raises(InputError) as error:
        read_labels("eyepacs", aptos.labels, aptos.images)
    message = str(error.value)
    assert "train.csv" in message and "['id_code', 'diagnosis']" in message
    assert "expects ['image', 'level']" in message and "--source aptos" in message
    # The IDRiD expectation shows the trailing space its publisher ships.
    with pytest.raises(InputError, match=r"'Risk of macular edema '"):
        read_labels("idrid", aptos.labels, aptos.images)
    with pytest.raises(InputError, match="--image_column"):
        read_labels("csv", aptos.labels, aptos.images, CsvColumns("file", "grade"))
    # DDR has no header: a header line is a sign of the wrong file or source.
    header_txt = tmp_path / "train.txt"
    header_txt.write_text("image label\na.jpg 0\n")
    with pytest.raises(InputError, match="DDR label files have no header"):
        read_labels("ddr", [header_txt], [tmp_path])


def test_missing_label_file_and_mismatched_folder_count(tmp_path):
    with pytest.raises(InputError, match="--labels .*nope.csv is not a file"):
        read_labels("aptos", [tmp_path / "nope.csv"], [tmp_path])
    with pytest.raises(ValueError, match="one folder for all --labels files or one per file"):
        read_labels("ddr", [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"], [tmp_path, tmp_path])
