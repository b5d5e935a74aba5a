"""Tests for both eyes of a patient (``generate_dataset(eyes_per_patient=2)``, ``--eyes_per_patient 2``).

Measured on ``pairs`` below (seed 0, balanced grade weights, 400/100/100 images = 300 patients): 216 of 300
patients (72.0%) have the same DR grade in both eyes, 79 (26.3%) grades one step apart, 5 (1.7%) two or more (the
kernel's expectation: 70.0%, 27.5%, 2.5%); train's images per grade 77, 88, 71, 85, 79 (80 each requested). With
weights 4,1,1,1,1 (the multi-disease demo's), same sizes: 67.0% / 31.0% / 2.0%, train's grade shares 0.49, 0.12,
0.14, 0.14, 0.12 (0.50, then 0.125 each). On 10,000 patients' grades alone (``_split_patients``, no images):
70.2% / 27.2% / 2.7% and shares 0.20 each (balanced); 70.3% / 27.2% / 2.5% and 0.50, 0.12, 0.12, 0.13, 0.13 (4,1,1,1,1).
"""

from __future__ import annotations

import collections

import datasets
import numpy as np
import pytest

from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.metrics.screening import patient_screening_metrics
from retina_vqa.questions import DIAGNOSIS_ANSWERS
from retina_vqa.synthetic.__main__ import main
from retina_vqa.synthetic.build import FELLOW_EYE_AGREEMENT, fellow_eye_kernel, generate_dataset, render_example
from retina_vqa.synthetic.export import write_dataset_card

SIZES = {"num_train_images": 400, "num_validation_images": 100, "num_test_images": 100, "image_size": 64}


def _images(ds: datasets.Dataset) -> list[dict]:
    """One dict per image (image_id, patient_id, grade, laterality), in image order."""
    columns = [c for c in ("image_id", "patient_id", "grade", "laterality") if c in ds.column_names]
    rows = ds.select_columns(columns).to_dict()
    by_image = {}
    for values in zip(*rows.values(), strict=True):
        row = dict(zip(rows, values, strict=True))
        by_image.setdefault(row["image_id"], row)
    return list(by_image.values())


def _grade_steps(images: list[dict]) -> collections.Counter:
    """How many patients have their two eyes 0, 1, or 2 and more grades apart."""
    return collections.Counter(
        min(abs(a["grade"] - b["grade"]), 2) for a, b in zip(images[::2], images[1::2], strict=True)
    )


@pytest.fixture(scope="module")
def pairs() -> datasets.DatasetDict:
    return generate_dataset(**SIZES, seed=0, num_workers=1, question_types=["diagnosis"], eyes_per_patient=2)


def test_pairs_are_one_patients_two_eyes(pairs):
    for split in pairs:
        images = _images(pairs[split])
        assert len(images) == SIZES[f"num_{split}_images"]
        for k, (first, second) in enumerate(zip(images[::2], images[1::2], strict=True)):
            assert first["patient_id"] == second["patient_id"] == f"{split}-p{k:05d}"
            assert {first["laterality"], second["laterality"]} == {"right", "left"}
        # Which eye comes first is drawn, not fixed.
        assert {image["laterality"] for image in images[::2]} == {"right", "left"}
    ids = {split: {row["patient_id"] for row in _images(pairs[split])} for split in pairs}
    assert (
        not ids["train"] & ids["validation"] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    )


def test_between_eye_agreement_is_realistic(pairs):
    steps = sum((_grade_steps(_images(pairs[split])) for split in pairs), collections.Counter())
    patients = sum(steps.values())
    assert patients == 300
    # Expected 70% / 27.5% / 2.5%; 300 patients: one standard deviation of the agreement is 2.6 points.
    assert 0.62 <= steps[0] / patients <= 0.78, steps
    assert steps[1] > 3 * steps[2], steps  # most disagreements are one grade
    assert steps[2] / patients <= 0.06, steps


@pytest.mark.parametrize("weights", [(1, 1, 1, 1, 1), (4, 1, 1, 1, 1), (1, 2, 1, 1, 3), (0, 1, 1, 0, 1)])
def test_fellow_eye_kernel_keeps_the_grade_mix(weights):
    kernel = fellow_eye_kernel(weights)
    w = np.asarray(weights, float) / sum(weights)
    np.testing.assert_allclose(kernel.sum(axis=1), 1.0)
    assert (kernel >= 0).all()
    np.testing.assert_allclose(w @ kernel, w, atol=1e-12)  # fellow eyes have the first eyes' grade mix
    assert np.sum(w * np.diag(kernel)) == pytest.approx(FELLOW_EYE_AGREEMENT)
    steps = np.abs(np.subtract.outer(np.arange(5), np.arange(5)))
    assert kernel[steps >= 3].max() == 0.0
    assert kernel[np.ix_(w > 0, w == 0)].sum() == 0.0  # no eye gets a grade of weight zero


def test_single_grade_weights_make_every_pair_agree():
    np.testing.assert_allclose(fellow_eye_kernel((0, 0, 0, 0, 1)), np.eye(5))
    dd = generate_dataset(8, 0, 0, image_size=64, grade_weights=(0, 0, 1, 0, 0), num_workers=1, eyes_per_patient=2)
    assert set(dd["train"]["grade"]) == {2}


@pytest.mark.parametrize("weights", [(1, 1, 1, 1, 1), (4, 1, 1, 1, 1)])
def test_grade_mix_stays_close_to_the_weights(pairs, weights):
    dd = pairs
    if weights != (1, 1, 1, 1, 1):
        dd = generate_dataset(
            **SIZES, seed=0, num_workers=1, question_types=["diagnosis"], grade_weights=weights, eyes_per_patient=2
        )
    grades = [image["grade"] for image in _images(dd["train"])]
    shares = np.bincount(grades, minlength=5) / len(grades)
    expected = np.asarray(weights, float) / sum(weights)
    # The first eyes match the weights exactly; 200 fellow eyes add a sampling error of about 1.4 points per grade.
    np.testing.assert_allclose(shares, expected, atol=0.06)
    first = np.bincount(grades[::2], minlength=5)
    assert (np.abs(first - expected * 200) <= 1).all()


def test_default_and_one_eye_have_no_patients():
    default = generate_dataset(4, 2, 2, image_size=64, seed=0, num_workers=1)
    one = generate_dataset(4, 2, 2, image_size=64, seed=0, num_workers=1, eyes_per_patient=1)
    two = generate_dataset(4, 2, 2, image_size=64, seed=0, num_workers=1, eyes_per_patient=2)
    for split in default:
        assert "patient_id" not in default[split].column_names
        assert one[split].data.table.equals(default[split].data.table)
        assert one[split]._fingerprint == default[split]._fingerprint
        assert "patient_id" in two[split].column_names
        assert two[split]._fingerprint != default[split]._fingerprint


def test_multidisease_pairs_draw_conditions_per_eye():
    dd = generate_dataset(
        20,
        0,
        0,
        image_size=64,
        seed=1,
        num_workers=1,
        conditions="all",
        prevalence="glaucoma=0.5,amd=0.5,hypertensive=0.5,rvo=0.5",
        eyes_per_patient=2,
    )
    train = dd["train"]
    assert {"conditions", "patient_id"} <= set(train.column_names)
    rows = train.select_columns(["image_id", "patient_id", "laterality", "question_type", "answer", "conditions"])
    rows = rows.to_dict()
    answers = {(i, q): a for i, q, a in zip(rows["image_id"], rows["question_type"], rows["answer"], strict=True)}
    per_image = {
        i: (p, lat, c)
        for i, p, lat, c in zip(
            rows["image_id"], rows["patient_id"], rows["laterality"], rows["conditions"], strict=True
        )
    }
    images = list(per_image)
    assert len(images) == 20
    for first, second in zip(images[::2], images[1::2], strict=True):
        assert per_image[first][0] == per_image[second][0]
        assert {per_image[first][1], per_image[second][1]} == {"right", "left"}
        for image in (first, second):
            assert answers[(image, "laterality")] == f"{per_image[image][1]} eye"  # the rows answer the forced eye
    # Other conditions are drawn per eye: some patients have glaucoma in one eye only.
    glaucoma = [per_image[i][2]["glaucoma"] != "none" for i in images]
    assert any(a != b for a, b in zip(glaucoma[::2], glaucoma[1::2], strict=True))


def test_the_patient_decides_the_eye():
    task = (0, "train", 3, 2, 64, 0.0)
    defects = ("blurred", "underexposed", "overexposed")
    left = render_example((*task, None, defects, ("train-p00001", "left")))
    right = render_example((*task, None, defects, ("train-p00001", "right")))
    assert (left["laterality"], right["laterality"]) == ("left", "right")
    assert left["patient_id"] == right["patient_id"] == "train-p00001"
    assert left["image_bytes"] != right["image_bytes"]
    assert "patient_id" not in render_example(task)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eyes_per_patient": 3}, "--eyes_per_patient must be 1"),
        ({"eyes_per_patient": 0}, "--eyes_per_patient must be 1"),
        ({"eyes_per_patient": 2, "num_validation_images": 3}, "--num_validation_images is 3, odd.*validation split"),
    ],
)
def test_bad_eyes_per_patient_is_refused(kwargs, message):
    args = {"num_train_images": 4, "num_validation_images": 2, "num_test_images": 0, "image_size": 64, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_dataset(**args)


def test_card_counts_patients_and_agreement(pairs, tmp_path):
    text = write_dataset_card(pairs, tmp_path / "card").read_text()
    assert "## Patients" in text
    for split in pairs:
        steps = _grade_steps(_images(pairs[split]))
        n = sum(steps.values())
        cells = [f"{steps[k]} ({steps[k] / n:.0%})" for k in range(3)]
        assert f"| {split} | {n} | {' | '.join(cells)} |" in text
    small = generate_dataset(2, 0, 0, image_size=64, num_workers=1)
    assert "## Patients" not in write_dataset_card(small, tmp_path / "default").read_text()


def test_patient_metrics_read_the_pairs(pairs):
    test = pairs["test"].select_columns(["answer", "patient_id", "grade"]).to_dict()
    # Every eye called right: perfect per-patient scores over the 50 patients.
    metrics = patient_screening_metrics(test["answer"], test["answer"], test["patient_id"], list(DIAGNOSIS_ANSWERS))
    assert metrics["patients"] == 50
    assert metrics["patient_referable_sensitivity"] == 1.0 and metrics["patient_referable_specificity"] == 1.0


def test_cli_flag_reaches_the_data(tmp_path, capsys):
    out = tmp_path / "pairs"
    argv = ["--output_dir", str(out), "--num_train_images", "6", "--num_validation_images", "2"]
    argv += ["--num_test_images", "2", "--image_size", "64", "--num_workers", "1", "--question_types", "diagnosis"]
    main([*argv, "--eyes_per_patient", "2"])
    dd = load_dataset_dir(str(out))
    assert (
        dd["train"]["patient_id"]
        == ["train-p00000", "train-p00000", "train-p00001", "train-p00001"] + ["train-p00002"] * 2
    )
    assert "--eyes_per_patient 2" in (out / "README.md").read_text()
    for bad, message in (["--eyes_per_patient", "3"], "invalid choice"), (["--num_test_images", "3"], "odd"):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--overwrite", "--eyes_per_patient", "2", *bad])
        error = capsys.readouterr().err
        assert exc.value.code == 2 and message in error and "--eyes_per_patient" in error
    assert (out / "README.md").exists()  # refused before the old dataset was replaced
