"""Split assignment: by patient, stratified by grade, deterministic per seed, the source's split kept."""

from __future__ import annotations

import collections
import random

import pytest

from retina_vqa.build_dataset import LabelRecord, assign_splits


def _records(patients: int, seed: int = 0, source_split: str | None = None) -> list[LabelRecord]:
    """Two eyes per patient, grades skewed like a screening population (mostly 0), eyes often differing."""
    rng = random.Random(seed)
    records = []
    for patient in range(patients):
        worst = rng.choices(range(5), weights=[50, 15, 20, 8, 7])[0]
        for eye in ("left", "right"):
            grade = worst if eye == "left" else rng.randint(0, worst)
            records.append(
                LabelRecord(
                    image=f"{patient}_{eye}.jpeg",
                    image_id=f"{patient}_{eye}",
                    grade=grade,
                    label_file="trainLabels.csv",
                    line=len(records) + 2,
                    images_dir="train",
                    patient_id=str(patient),
                    laterality=eye,
                    source_split=source_split,
                )
            )
    return records


def _ids(splits) -> dict[str, list[str]]:
    return {split: [r.image_id for r in records] for split, records in splits.items()}


def test_both_eyes_of_a_patient_share_a_split_and_shares_follow_the_fractions():
    records = _records(500)
    splits, notes = assign_splits(records, seed=0, validation_fraction=0.1, test_fraction=0.2)
    patient_splits = collections.defaultdict(set)
    for split, members in splits.items():
        for record in members:
            patient_splits[record.patient_id].add(split)
    assert all(len(s) == 1 for s in patient_splits.values())
    assert sum(map(len, splits.values())) == 1000
    assert [len(splits[s]) for s in ("train", "validation", "test")] == pytest.approx([700, 100, 200], abs=2)
    # Stratified: each grade (a patient's worse eye) is split in the same proportions, to within one patient.
    for grade in range(5):
        worst = {
            s: sum(1 for r in members if r.laterality == "left" and r.grade == grade) for s, members in splits.items()
        }
        total = sum(worst.values())
        assert worst["validation"] == pytest.approx(0.1 * total, abs=1.5)
        assert worst["test"] == pytest.approx(0.2 * total, abs=1.5)
    assert notes == [
        "validation and test carved from all images (validation 0.1, test 0.2), stratified by grade, grouped by "
        "patient, seed 0"
    ]


def test_deterministic_per_seed_whatever_the_input_order():
    records = _records(100)
    first, _ = assign_splits(records, seed=3)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    again, _ = assign_splits(shuffled, seed=3)
    assert _ids(first) == _ids(again)
    assert all(ids == sorted(ids) for ids in _ids(first).values())
    other, _ = assign_splits(records, seed=4)
    assert _ids(other) != _ids(first)


def test_without_patients_each_image_is_its_own_group():
    records = _records(50)
    for record in records:
        record.patient_id = None
    splits, notes = assign_splits(records, seed=0)
    assert "grouped by image (the labels name no patients: one patient's images may be in different splits)" in notes[0]
    split_of = {r.image_id: s for s, members in splits.items() for r in members}
    # Nothing keeps eyes together now; with 50 patients some pairs are split.
    assert any(split_of[f"{p}_left"] != split_of[f"{p}_right"] for p in range(50))


def test_source_splits_are_kept_and_only_missing_splits_are_carved():
    train = _records(40, source_split="train")
    test = _records(10, seed=1, source_split="test")
    for record in test:
        record.image_id = "test-" + record.image_id
        record.patient_id = "test-" + record.patient_id
    splits, notes = assign_splits(train + test, seed=0, validation_fraction=0.25, test_fraction=0.2)
    assert _ids(splits)["test"] == sorted(r.image_id for r in test)
    assert len(splits["validation"]) == pytest.approx(20, abs=2)  # 0.25 of the 80 source training images
    assert {r.source_split for r in splits["validation"]} == {"train"}
    assert notes[0] == "test: the source's own test split (20 images)"
    assert "validation carved from the source's training images (validation 0.25)" in notes[1]
    for record in train[:4]:
        record.source_split = "validation"
    splits, notes = assign_splits(train + test, seed=0)
    assert notes[-1] == "train: the source's own training split"
    assert len(splits["validation"]) == 4


@pytest.mark.parametrize(
    ("validation", "test", "message"),
    [(-0.1, 0.2, "--validation_fraction"), (0.1, 1.0, "--test_fraction"), (0.5, 0.5, "leave no training images")],
)
def test_fractions_are_checked_with_the_flag_named(validation, test, message):
    with pytest.raises(ValueError, match=message):
        assign_splits(_records(5), validation_fraction=validation, test_fraction=test)


def test_images_without_a_patient_and_patients_the_source_splits_part_are_noted_and_warned(caplog):
    records = _records(40)
    for record in records[:6]:
        record.patient_id = None
    with caplog.at_level("WARNING", logger="retina_vqa.build_dataset"):
        _, notes = assign_splits(records, seed=0)
    assert "grouped by patient (6 of 80 images without a patient id: each its own group), seed 0" in notes[0]
    assert "6 of 80 images have no patient id" in caplog.text
    caplog.clear()
    # Patient 30's right eye in the source's test split, the left in the carved pool: kept as published.
    records[61].source_split = "test"
    with caplog.at_level("WARNING", logger="retina_vqa.build_dataset"):
        splits, notes = assign_splits(records, seed=0)
    assert [r.image_id for r in splits["test"]] == ["30_right"]
    assert notes[-1] == "1 patient has images in more than one split, as the source's own splits place them"
    assert "(kept as published)" in caplog.text
