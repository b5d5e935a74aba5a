"""Patients kept together: ``--patients FILE`` for every source, Messidor-2's examination pairs, the
``patient_id`` column, the warning and card text without patients, and bad patients files reported."""

from __future__ import annotations

import collections
import logging
from pathlib import PurePosixPath

import datasets
import pytest

from retina_vqa.build_dataset import InputError, build_dataset
from retina_vqa.build_dataset.__main__ import build_parser, main
from retina_vqa.data.loading import load_dataset_dir

from .helpers import (
    label_names,
    make_aptos,
    make_csv,
    make_eyepacs,
    make_idrid,
    make_messidor2,
    write_messidor2_pairs,
    write_patients,
)

CSV_NO_PATIENT = {"image_column": "file", "grade_column": "dr_grade", "laterality_column": "eye"}


def _load(output_dir) -> datasets.DatasetDict:
    return load_dataset_dir(str(output_dir))


def _splits_of_patients(built: datasets.DatasetDict) -> dict[str, set[str]]:
    splits = collections.defaultdict(set)
    for split in built:
        for patient in built[split]["patient_id"]:
            splits[patient].add(split)
    return splits


def _patient_of_image(built: datasets.DatasetDict) -> dict[str, str]:
    pairs = {(i, p) for split in built.values() for i, p in zip(split["image_id"], split["patient_id"], strict=True)}
    patient_of = dict(pairs)
    assert len(patient_of) == len(pairs), "an image has more than one patient_id"
    return patient_of


# Each source's fixture, its label names, and the patient each name is given: groups that the source itself does
# not know (APTOS and Messidor-2 name no patients; EyePACS patients merged two by two; CSV patients four images).
PATIENT_CASES = {
    "aptos": (lambda root: make_aptos(root, n=30), lambda i: f"A{i // 3}", {}),
    "eyepacs": (lambda root: make_eyepacs(root, patients=16), lambda i: f"E{i // 4}", {}),
    "messidor2": (lambda root: make_messidor2(root, n=40), lambda i: f"M{i // 2}", {}),
    "csv": (lambda root: make_csv(root, patients=12), lambda i: f"C{i // 4}", CSV_NO_PATIENT),
}


@pytest.mark.parametrize("source", list(PATIENT_CASES))
def test_patients_file_keeps_every_patient_in_one_split_and_writes_patient_id(tmp_path, source):
    make, patient, overrides = PATIENT_CASES[source]
    fixture = make(tmp_path / "in")
    names = label_names(fixture)
    # Names as the label file gives them, or with the image file's extension (csv, eyepacs), or without it.
    extension = {"aptos": ".png", "eyepacs": ".jpeg", "csv": ".jpg", "messidor2": ""}[source]
    rows = [[name + (extension if i % 2 else ""), patient(i)] for i, name in enumerate(names)]
    patients = write_patients(tmp_path / "patients.csv", rows)
    build_dataset(fixture.options(source, tmp_path / "out", patients=patients, **overrides))
    built = _load(tmp_path / "out")
    assert all("patient_id" in built[split].features for split in built)
    expected = {PurePosixPath(name).stem: patient(i) for i, name in enumerate(names)}
    assert _patient_of_image(built) == {i: p for i, p in expected.items() if fixture.grades[i] is not None}
    splits_of = _splits_of_patients(built)
    assert all(len(splits) == 1 for splits in splits_of.values()), splits_of
    assert set().union(*splits_of.values()) == {"train", "validation", "test"}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "grouped by patient" in card and f"`--patients {patients}`" in card
    assert "grouped by image" not in card


def _pairs_fixture(root):
    return make_messidor2(root, n=40)  # 20 examinations; the last (rows 38 and 39) ungradable


@pytest.mark.parametrize(
    ("header", "separator"), [("left,right", ","), (None, " "), ("Left eye;Right eye", ";"), (None, "\t")]
)
def test_messidor2_pairs_make_both_eyes_of_an_examination_one_patient(tmp_path, header, separator):
    fixture = _pairs_fixture(tmp_path / "in")
    pairs = write_messidor2_pairs(fixture, tmp_path / "messidor-2.csv", header, separator)
    build_dataset(fixture.options("messidor2", tmp_path / "out", messidor2_pairs=pairs))
    built = _load(tmp_path / "out")
    patient_of = _patient_of_image(built)
    stems = [PurePosixPath(name).stem for name in label_names(fixture)]
    assert set(patient_of) == set(stems[:38])
    for i in range(0, 38, 2):
        assert patient_of[stems[i]] == patient_of[stems[i + 1]]
    assert len(set(patient_of.values())) == 19
    splits_of = _splits_of_patients(built)
    assert all(len(splits) == 1 for splits in splits_of.values()) and len(splits_of) == 19
    card = (tmp_path / "out" / "README.md").read_text()
    assert "grouped by patient" in card and f"examination pairs of `--messidor2_pairs {pairs}`" in card


def test_messidor2_pairs_report_lines_that_are_not_two_names(tmp_path):
    fixture = make_messidor2(tmp_path / "in", n=6)
    names = label_names(fixture)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{names[0]} {names[1]}\n{names[2]}\n{names[3]} {names[4]} {names[5]}\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        build_dataset(fixture.options("messidor2", tmp_path / "out", messidor2_pairs=pairs))
    # Lines 2 and 3 are not pairs: reported once each, not again as images without a patient.
    assert error.value.report.counts() == {"malformed_line": 2}
    message = str(error.value)
    assert f"pairs.txt line 2: {names[2]!r} is not two image names" in message
    assert "pairs.txt line 3" in message and "--messidor2_pairs" in message
    # --skip_invalid: the images of those lines have no patient and are left out (4 and 5 are ungradable).
    build_dataset(fixture.options("messidor2", tmp_path / "out", messidor2_pairs=pairs, skip_invalid=True))
    assert _patient_of_image(_load(tmp_path / "out")).keys() == {PurePosixPath(n).stem for n in names[:2]}


@pytest.mark.parametrize("source", ["aptos", "messidor2"])
def test_without_patient_ids_the_split_warns_and_the_card_says_grouped_by_image(tmp_path, caplog, source):
    fixture = (make_aptos if source == "aptos" else make_messidor2)(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="retina_vqa.build_dataset"):
        build_dataset(fixture.options(source, tmp_path / "out"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("grouped by image" in w and "--patients" in w for w in warnings), warnings
    if source == "messidor2":
        assert any("--messidor2_pairs" in w for w in warnings), warnings
    card = (tmp_path / "out" / "README.md").read_text()
    assert "grouped by image" in card and "grouped by patient" not in card
    assert "patient_id" not in _load(tmp_path / "out")["train"].features


def test_eyepacs_names_are_patients_without_a_warning(tmp_path, caplog):
    fixture = make_eyepacs(tmp_path / "in", patients=6)
    with caplog.at_level(logging.WARNING, logger="retina_vqa.build_dataset"):
        build_dataset(fixture.options("eyepacs", tmp_path / "out"))
    assert not [r for r in caplog.records if "grouped by image" in r.getMessage()]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "grouped by patient" in card and "the image names (`10_left` / `10_right`: patient 10)" in card


def _bad_patients(tmp_path):
    """APTOS, 10 images; the patients file leaves out images 8 and 9, names an image no label row names, gives
    image 0 a second patient, and image 7 an empty patient id."""
    fixture = make_aptos(tmp_path / "in", n=10)
    names = label_names(fixture)
    rows = [[name, f"P{i // 2}"] for i, name in enumerate(names[:8])]
    rows[7][1] = ""
    rows += [["not_an_image", "P9"], [names[0] + ".png", "P5"]]
    return fixture, names, write_patients(tmp_path / "patients.csv", rows)


def test_bad_patients_files_are_reported_with_file_line_and_fix(tmp_path):
    fixture, names, patients = _bad_patients(tmp_path)
    with pytest.raises(InputError) as error:
        build_dataset(fixture.options("aptos", tmp_path / "out", patients=patients))
    assert error.value.report.counts() == {
        "unknown_value": 1,
        "patient_unknown_image": 1,
        "patient_missing": 2,
        "patient_conflict": 1,
    }
    message = str(error.value)
    for expected in (
        "patients.csv line 9: patient_id = ''; expected the patient's id",
        "patients.csv line 10: not_an_image names no labelled image",
        f"patients.csv line 11: {names[0]}.png is already given patient P0 at patients.csv line 2",
        f"train.csv line 10: {names[8]}.png has no row in {patients}",
        f"train.csv line 11: {names[9]}.png has no row in {patients}",
        "--skip_invalid",
        "fix: ",
    ):
        assert expected in message, expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "patients.csv"]


def test_skip_invalid_leaves_out_images_without_a_patient_and_counts_the_rows(tmp_path):
    fixture, names, patients = _bad_patients(tmp_path)
    build_dataset(fixture.options("aptos", tmp_path / "out", patients=patients, skip_invalid=True))
    patient_of = _patient_of_image(_load(tmp_path / "out"))
    # Images 7 (empty id), 8 and 9 (not in the file) are left out; image 0 keeps its first patient.
    assert patient_of == {names[i]: f"P{i // 2}" for i in range(7)}
    card = (tmp_path / "out" / "README.md").read_text()
    for row in ("| patient_missing | 2 |", "| patient_unknown_image | 1 |", "| patient_conflict | 1 |"):
        assert row in card, row


@pytest.mark.parametrize(
    ("header", "said"),
    [
        (("file", "patient"), "['file', 'patient']"),
        (("0000c1434d8d", "P0"), "line 1 looks like data, not a header"),
        (("left", "right"), "--messidor2_pairs"),
    ],
)
def test_a_patients_header_that_does_not_fit_stops_the_build(tmp_path, header, said):
    fixture = make_messidor2(tmp_path / "in", n=4)
    patients = write_patients(tmp_path / "patients.csv", [["IM000000.JPG", "P0"]], header=header)
    with pytest.raises(InputError) as error:
        build_dataset(fixture.options("messidor2", tmp_path / "out", patients=patients))
    message = str(error.value)
    assert f"--patients {patients}" in message and "['image', 'patient_id']" in message and said in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--patients .*nope.csv is not a file"):
        build_dataset(fixture.options("messidor2", tmp_path / "out", patients=tmp_path / "nope.csv"))


def test_idrid_names_in_both_sets_need_the_image_id_and_patients_across_source_splits_are_noted(tmp_path, caplog):
    fixture = make_idrid(tmp_path / "in", n_train=10, n_test=5)
    ids = sorted(fixture.grades)
    rows = [["IDRiD_001", "X"]] + [[image_id, f"P-{image_id}"] for image_id in ids if image_id != "train/IDRiD_001"]
    patients = write_patients(tmp_path / "patients.csv", rows)
    with pytest.raises(InputError) as error:
        build_dataset(fixture.options("idrid", tmp_path / "out", patients=patients))
    message = str(error.value)
    assert "patients.csv line 2: IDRiD_001 names 2 labelled images (test/IDRiD_001, train/IDRiD_001)" in message
    # The image_ids tell them apart; one patient with an image in the source's training and testing sets.
    rows = [[image_id, f"P-{image_id.rsplit('/', 1)[-1]}"] for image_id in ids]
    patients = write_patients(tmp_path / "patients.csv", rows)
    with caplog.at_level(logging.WARNING, logger="retina_vqa.build_dataset"):
        build_dataset(fixture.options("idrid", tmp_path / "out", patients=patients, validation_fraction=0.2))
    built = _load(tmp_path / "out")
    splits_of = _splits_of_patients(built)
    straddling = {p for p, s in splits_of.items() if len(s) > 1}
    # Only the source's test split parts them: the carved validation split took whole patients.
    assert straddling == {f"P-IDRiD_{i:03d}" for i in range(1, 6)}
    assert all(len(splits_of[p]) == 2 and "test" in splits_of[p] for p in straddling)
    note = "5 patients have images in more than one split, as the source's own splits place them"
    assert note in (tmp_path / "out" / "README.md").read_text()
    assert any(note in r.getMessage() for r in caplog.records)


def test_patient_flags_on_the_command_line(tmp_path, capsys):
    text = build_parser().format_help()
    assert "--patients FILE" in text and "--messidor2_pairs FILE" in text and "image,patient_id" in text
    fixture = make_messidor2(tmp_path / "in", n=20)
    pairs = write_messidor2_pairs(fixture, tmp_path / "messidor-2.csv")
    base = ["--labels", str(fixture.labels[0]), "--images", str(fixture.images[0])]
    output = tmp_path / "out"
    main(["--source", "messidor2", *base, "--output_dir", str(output), "--messidor2_pairs", str(pairs)])
    assert "--messidor2_pairs" in (output / "README.md").read_text()
    assert all(len(s) == 1 for s in _splits_of_patients(_load(output)).values())
    refused = [
        (
            ["--source", "aptos", "--messidor2_pairs", str(pairs)],
            "--messidor2_pairs only applies to --source messidor2",
        ),
        (["--source", "messidor2", "--messidor2_pairs", str(pairs), "--patients", str(pairs)], "give one of"),
        (
            ["--source", "csv", "--image_column", "a", "--grade_column", "b", "--patient_column", "c"]
            + ["--patients", str(pairs)],
            "give one of",
        ),
    ]
    for flags, said in refused:
        with pytest.raises(SystemExit) as exit_info:
            main([*flags, *base, "--output_dir", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        assert said in capsys.readouterr().err
    bad = write_patients(tmp_path / "patients.csv", [["x", "y"]], header=("file", "patient"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "messidor2", *base, "--output_dir", str(tmp_path / "o"), "--patients", str(bad)])
    assert exit_info.value.code == 1
    assert "['image', 'patient_id']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
