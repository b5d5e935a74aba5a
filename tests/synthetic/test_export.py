"""Tests for writing the synthetic dataset (retina_vqa.synthetic.export): save_to_disk, imagefolder, card."""

from __future__ import annotations

import datasets
from PIL import Image

from retina_vqa.data.layout import image_row_features
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.questions import QUESTION_TYPES
from retina_vqa.synthetic.build import dataset_features, generate_dataset
from retina_vqa.synthetic.export import save_dataset

from .helpers import SIZE


def test_features_roundtrip_save_to_disk(small_dd, tmp_path):
    out = save_dataset(small_dd, tmp_path / "ds", "save_to_disk", command="python -m retina_vqa.synthetic x")
    stored = datasets.load_from_disk(str(out))  # image rows: each image once, its questions as lists
    assert stored["train"].num_rows == 10 and stored["train"].features == image_row_features(dataset_features())
    row = stored["test"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (SIZE, SIZE)
    assert row["image"].format == "PNG" and len(row["question"]) == len(QUESTION_TYPES)
    loaded = load_dataset_dir(str(out))
    assert set(loaded) == {"train", "validation", "test"}
    features = dataset_features()
    features["image"] = datasets.Image(decode=False)  # references into the stored images
    assert loaded["train"].features == features
    assert loaded["train"].num_rows == 10 * len(QUESTION_TYPES)
    assert loaded["test"].remove_columns("image").to_list() == small_dd["test"].remove_columns("image").to_list()
    assert isinstance(loaded["test"][0]["lesions"], list)
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
