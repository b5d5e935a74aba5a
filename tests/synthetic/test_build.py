"""Tests for dataset assembly (retina_vqa.synthetic.build): rows, answers, splits, determinism, arguments."""

from __future__ import annotations

import hashlib

import datasets
import pytest

from retina_vqa.questions import COUNT_WORDS, DIAGNOSIS_ANSWERS, QUESTION_TYPES, count_haemorrhage_quadrants
from retina_vqa.synthetic.build import generate_dataset

from .helpers import SIZE, SMALL


def _image_rows(ds: datasets.Dataset) -> dict[str, dict]:
    """One metadata dict per image id (the image column stays encoded)."""
    raw = ds.cast_column("image", datasets.Image(decode=False))
    out = {}
    for row in raw:
        out.setdefault(row["image_id"], row)
    return out


def _digest(dd: datasets.DatasetDict) -> str:
    h = hashlib.sha256()
    for split in dd:
        table = dd[split].data.table
        for column in table.columns:
            h.update(repr(column.to_pylist()).encode())
    return h.hexdigest()


def test_deterministic_and_seed_dependent(small_dd):
    again = generate_dataset(**SMALL, seed=0, num_workers=2)  # worker count must not matter
    assert _digest(again) == _digest(small_dd)
    other = generate_dataset(**SMALL, seed=1, num_workers=1)
    assert _digest(other) != _digest(small_dd)


def test_paraphrase_keeps_images():
    plain = generate_dataset(4, 0, 0, image_size=64, seed=5, num_workers=1)["train"]
    para = generate_dataset(4, 0, 0, image_size=64, seed=5, paraphrase=True, num_workers=1)["train"]
    assert plain.data.table.column("image").equals(para.data.table.column("image"))
    assert plain["answer"][:] == para["answer"][:]
    canonical = {info["question"] for info in QUESTION_TYPES.values()}
    assert set(plain["question"][:]) == canonical
    assert set(para["question"][:]) - canonical  # some rows reworded


def test_splits_disjoint(small_dd):
    ids, hashes = {}, {}
    for split in small_dd:
        rows = _image_rows(small_dd[split])
        ids[split] = set(rows)
        hashes[split] = {hashlib.sha256(r["image"]["bytes"]).hexdigest() for r in rows.values()}
        assert len(hashes[split]) == len(rows)
    for a in small_dd:
        for b in small_dd:
            if a < b:
                assert not ids[a] & ids[b]
                assert not hashes[a] & hashes[b]


def test_every_question_type_in_every_split(small_dd):
    for split in small_dd:
        assert set(small_dd[split]["question_type"][:]) == set(QUESTION_TYPES)


def test_answers_match_metadata(small_dd):
    for split in small_dd:
        cols = small_dd[split].remove_columns("image").to_dict()
        for i in range(len(cols["question"])):
            qt, answer, grade = cols["question_type"][i], cols["answer"][i], cols["grade"][i]
            lesions = cols["lesions"][i]
            kinds = {b["type"] for b in lesions}
            assert answer == answer.lower().strip()
            if qt == "abnormality":
                assert answer == ("no" if grade == 0 else "yes")
            elif qt == "diagnosis":
                assert answer == DIAGNOSIS_ANSWERS[grade]
            elif qt == "laterality":
                assert answer == f"{cols['laterality'][i]} eye"
            elif qt == "haemorrhages":
                assert answer == ("yes" if grade >= 2 else "no")
            elif qt == "microaneurysms":
                assert answer == ("yes" if grade >= 1 else "no")
            elif qt == "hard_exudates":
                assert answer == ("yes" if "hard_exudate" in kinds else "no")
            elif qt == "neovascularisation":
                assert answer == ("yes" if "neovascularisation" in kinds else "no")
                assert grade == 4 or answer == "no"
            elif qt == "haemorrhage_quadrants":
                n = count_haemorrhage_quadrants(lesions, SIZE, cols["laterality"][i])
                assert answer == COUNT_WORDS[n]
                if grade >= 3:
                    assert answer == "four"
            elif qt == "quality":
                assert answer == ("yes" if cols["quality"][i] == "good" else "no")
            if grade == 0:
                assert lesions == []
            if grade == 1:
                assert kinds == {"microaneurysm"}


def test_grade_weights_and_balance():
    dd = generate_dataset(10, 0, 0, image_size=64, seed=0, question_types=["diagnosis"], num_workers=1)
    grades = dd["train"]["grade"][:]
    assert sorted(grades) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    dd = generate_dataset(
        6, 0, 0, image_size=64, grade_weights=[0, 0, 0, 0, 1], question_types=["diagnosis"], num_workers=1
    )
    assert set(dd["train"]["grade"][:]) == {4}
    assert dd["train"].num_rows == 6


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"num_train_images": -1}, "--num_train_images"),
        ({"image_size": 32}, "--image_size"),
        ({"grade_weights": [1, 1, 1]}, "--grade_weights"),
        ({"grade_weights": [1, -1, 1, 1, 1]}, "--grade_weights"),
        ({"grade_weights": [0, 0, 0, 0, 0]}, "--grade_weights"),
        ({"quality_defect_rate": 1.5}, "--quality_defect_rate"),
        ({"question_types": ["colour"]}, "--question_types"),
    ],
)
def test_bad_arguments_name_the_flag(kwargs, flag):
    args = {
        "num_train_images": 2,
        "num_validation_images": 0,
        "num_test_images": 0,
        "image_size": 64,
        **kwargs,
    }
    with pytest.raises(ValueError, match=flag):
        generate_dataset(**args)


def test_opt_in_defects_are_drawn_and_answered_ungradable():
    kinds = "small_pupil,eyelashes"
    dd = generate_dataset(8, 0, 0, image_size=64, seed=1, quality_defect_rate=1.0, quality_defects=kinds)
    rows = dd["train"].select_columns(["image_id", "question_type", "answer", "quality"]).to_dict()
    per_image = dict(zip(rows["image_id"], rows["quality"], strict=True))
    assert set(per_image.values()) == {"small_pupil", "eyelashes"}  # both kinds, nothing else, at rate 1
    quality_answers = [a for t, a in zip(rows["question_type"], rows["answer"], strict=True) if t == "quality"]
    assert quality_answers == ["no"] * 8
    # Another defect set is another dataset: its cache key differs from the default's.
    default = generate_dataset(8, 0, 0, image_size=64, seed=1, quality_defect_rate=1.0)
    assert dd["train"]._fingerprint != default["train"]._fingerprint
    assert set(default["train"]["quality"]) <= {"blurred", "underexposed", "overexposed"}


def test_naming_the_default_defects_changes_nothing():
    default = generate_dataset(4, 1, 1, image_size=64, seed=0, num_workers=1)
    named = generate_dataset(
        4, 1, 1, image_size=64, seed=0, num_workers=1, quality_defects="blurred,underexposed,overexposed"
    )
    assert _digest(named) == _digest(default)
    assert [named[s]._fingerprint for s in named] == [default[s]._fingerprint for s in default]


@pytest.mark.parametrize("kinds", ["blurred,foggy", ["eyelash"], ""])
def test_unknown_quality_defects_name_the_valid_ones(kinds):
    with pytest.raises(ValueError, match="--quality_defects") as excinfo:
        generate_dataset(2, 0, 0, image_size=64, quality_defects=kinds)
    assert "small_pupil" in str(excinfo.value) and "eyelashes" in str(excinfo.value)
