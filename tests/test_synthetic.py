"""Tests for the synthetic fundus VQA generator."""

from __future__ import annotations

import hashlib
import math

import datasets
import numpy as np
import pytest
from PIL import Image

from retina_vqa import synthetic
from retina_vqa.synthetic import (
    DIAGNOSIS_ANSWERS,
    QUESTION_TYPES,
    all_texts,
    count_haemorrhage_quadrants,
    generate_dataset,
    main,
    render_fundus,
    save_dataset,
)

SIZE = 96
SMALL = {"num_train_images": 10, "num_validation_images": 5, "num_test_images": 5, "image_size": SIZE}


@pytest.fixture(scope="module")
def small_dd() -> datasets.DatasetDict:
    return generate_dataset(**SMALL, seed=0, num_workers=1)


def _image_rows(ds: datasets.Dataset) -> dict[str, dict]:
    """One metadata dict per image id (the image column stays encoded)."""
    raw = ds.cast_column("image", datasets.Image(decode=False))
    out = {}
    for row in raw:
        out.setdefault(row["image_id"], row)
    return out


def test_question_type_contract():
    assert list(QUESTION_TYPES) == [
        "modality",
        "abnormality",
        "diagnosis",
        "blindness",
        "cause",
        "laterality",
        "microaneurysms",
        "haemorrhages",
        "hard_exudates",
        "cotton_wool_spots",
        "neovascularisation",
        "haemorrhage_quadrants",
        "quality",
    ]
    assert QUESTION_TYPES["modality"]["question"] == "what kind of examination is this image?"
    assert QUESTION_TYPES["abnormality"]["question"] == "is there any abnormality?"
    assert QUESTION_TYPES["diagnosis"]["question"] == "what is the diagnosis?"
    assert QUESTION_TYPES["blindness"]["question"] == "can this condition cause blindness?"
    assert QUESTION_TYPES["cause"]["question"] == "what might be the cause of this condition?"
    assert QUESTION_TYPES["blindness"]["answer_type"] == "open"
    assert QUESTION_TYPES["diagnosis"]["answer_type"] == "closed"
    for info in QUESTION_TYPES.values():
        assert info["paraphrases"][0] == info["question"]
        assert 3 <= len(info["paraphrases"]) <= 5
    texts = all_texts()
    assert all(t == t.lower() for t in texts)
    assert set(DIAGNOSIS_ANSWERS) <= set(texts)
    long_answers = [t for t in synthetic.BLINDNESS_ANSWERS + synthetic.CAUSE_ANSWERS if len(t.split()) > 3]
    assert long_answers and all(15 <= len(t.split()) <= 30 for t in long_answers)


def test_all_texts_cover_generated_rows():
    dd = generate_dataset(5, 0, 0, image_size=64, seed=3, paraphrase=True, num_workers=1)
    cols = dd["train"].select_columns(["question", "answer"]).to_dict()
    texts = set(all_texts(paraphrase=True))
    assert set(cols["question"]) <= texts
    assert set(cols["answer"]) <= texts
    assert not set(all_texts(paraphrase=True)) <= set(all_texts(paraphrase=False))


def test_features_roundtrip_save_to_disk(small_dd, tmp_path):
    out = save_dataset(small_dd, tmp_path / "ds", "save_to_disk", command="python -m retina_vqa.synthetic x")
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "validation", "test"}
    assert loaded["train"].features == synthetic.dataset_features()
    assert loaded["train"].num_rows == 10 * len(QUESTION_TYPES)
    row = loaded["test"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (SIZE, SIZE)
    assert row["image"].format == "PNG"
    assert isinstance(row["lesions"], list)
    card = (out / "README.md").read_text()
    assert "python -m retina_vqa.synthetic x" in card
    assert "| train | 10 | 130 |" in card
    for qt in QUESTION_TYPES:
        assert qt in card


def test_imagefolder_loads(tmp_path):
    dd = generate_dataset(5, 5, 5, image_size=64, seed=1, num_workers=1)
    save_dataset(dd, tmp_path / "if", "imagefolder")
    files = sorted(p.name for p in (tmp_path / "if" / "train").iterdir())
    assert files.count("metadata.jsonl") == 1
    assert len([f for f in files if f.endswith(".png")]) == 5  # one file per image, not per row
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "if"))
    assert set(loaded) == {"train", "validation", "test"}
    assert loaded["validation"].num_rows == 5 * len(QUESTION_TYPES)
    row = loaded["train"][0]
    assert row["image"].size == (64, 64)
    for col in ("question", "answer", "image_id", "question_type", "answer_type", "grade", "lesions"):
        assert col in row
    original = dd["train"].select_columns(["question", "answer", "image_id"]).to_dict()
    reloaded = loaded["train"].select_columns(["question", "answer", "image_id"]).to_dict()
    assert sorted(zip(*original.values(), strict=True)) == sorted(zip(*reloaded.values(), strict=True))


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
                assert answer == synthetic.COUNT_WORDS[n]
                if grade >= 3:
                    assert answer == "four"
            elif qt == "quality":
                assert answer == ("yes" if cols["quality"][i] == "good" else "no")
            if grade == 0:
                assert lesions == []
            if grade == 1:
                assert kinds == {"microaneurysm"}


def test_lesion_boxes_inside_image_and_fov():
    cx, cy, radius = synthetic.fov_geometry(128)
    rng = np.random.default_rng(0)
    for i in range(15):
        grade = i % 5
        image, lesions = render_fundus(rng, 128, grade, ("left", "right")[i % 2], "good")
        assert image.size == (128, 128) and image.mode == "RGB"
        assert (len(lesions) == 0) == (grade == 0)
        for b in lesions:
            assert 0 <= b["x0"] < b["x1"] <= 128 and 0 <= b["y0"] < b["y1"] <= 128
            for x, y in ((b["x0"], b["y0"]), (b["x1"], b["y0"]), (b["x0"], b["y1"]), (b["x1"], b["y1"])):
                assert math.hypot(x - cx, y - cy) <= radius + 1.5, (b, grade)
        if grade >= 3:
            assert count_haemorrhage_quadrants(lesions, 128, "left") == 4


def test_optic_disc_side_follows_laterality():
    # The disc is the brightest structure; it sits on the right of a right-eye photograph.
    for laterality, expect_right in (("right", True), ("left", False)):
        image, _ = render_fundus(np.random.default_rng(7), 128, 0, laterality, "good")
        lum = np.asarray(image.convert("L"), dtype=np.float32)
        y, x = np.unravel_index(np.argmax(lum), lum.shape)
        assert (x > 64) == expect_right


def test_quality_defects_change_image():
    good, _ = render_fundus(np.random.default_rng(3), 96, 2, "left", "good")
    dark, _ = render_fundus(np.random.default_rng(3), 96, 2, "left", "underexposed")
    bright, _ = render_fundus(np.random.default_rng(3), 96, 2, "left", "overexposed")
    mean = [np.asarray(im, dtype=np.float32).mean() for im in (dark, good, bright)]
    assert mean[0] < mean[1] < mean[2]


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


def test_cli_errors_name_the_flag(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    cases = [
        (["--output_dir", str(tmp_path / "full"), "--num_train_images", "1"], "--overwrite"),
        (["--output_dir", str(tmp_path / "a"), "--format", "parquet"], "--format"),
        (["--output_dir", str(tmp_path / "a"), "--grade_weights", "1,x,1,1,1"], "--grade_weights"),
        (["--output_dir", str(tmp_path / "a"), "--image_size", "16"], "--image_size"),
        (["--output_dir", str(tmp_path / "a"), "--num_test_images", "-2"], "--num_test_images"),
    ]
    for argv, flag in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert flag in capsys.readouterr().err
    assert (tmp_path / "full" / "x.txt").read_text() == "keep me"


def test_cli_writes_dataset_and_overwrites(tmp_path):
    out = tmp_path / "synth"
    argv = ["--output_dir", str(out), "--num_train_images", "3", "--num_validation_images", "1"]
    argv += ["--num_test_images", "1", "--image_size", "64", "--num_workers", "1"]
    main(argv)
    assert datasets.load_from_disk(str(out))["train"].num_rows == 3 * len(QUESTION_TYPES)
    main([*argv, "--overwrite", "--question_types", "diagnosis,laterality"])
    dd = datasets.load_from_disk(str(out))
    assert dd["train"].num_rows == 6
    assert "--question_types diagnosis,laterality" in (out / "README.md").read_text()


def test_preview_png(tmp_path):
    out = tmp_path / "preview.png"
    main(["--preview", str(out), "--image_size", "64", "--seed", "2"])
    with Image.open(out) as im:
        label = synthetic.preview_label_height(64)
        assert im.size == (4 * 64, 4 * (64 + label))
        assert im.format == "PNG"
