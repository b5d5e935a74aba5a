import json

import datasets
import numpy as np
import pytest
from PIL import Image

from retina_vqa.arguments import DataTrainingArguments
from retina_vqa.data.loading import check_columns, check_split, load_dataset_dir, load_raw_datasets, rows_to_validate


def test_loads_the_save_to_disk_format(tiny_dataset_dir):
    raw = load_raw_datasets(DataTrainingArguments(dataset_dir=str(tiny_dataset_dir)))
    assert list(raw) == ["train", "validation", "test"]
    assert isinstance(raw["train"].features["image"], datasets.Image)
    assert raw["train"].features["question"].dtype == "string"


def test_missing_and_wrong_dataset_dirs_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*retina_vqa.synthetic"):
        load_raw_datasets(DataTrainingArguments(dataset_dir=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a dataset saved with DatasetDict.save_to_disk"):
        load_raw_datasets(DataTrainingArguments(dataset_dir=str(tmp_path / "empty")))
    single = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    single.save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ValueError, match="single Dataset, not a DatasetDict"):
        load_raw_datasets(DataTrainingArguments(dataset_dir=str(tmp_path / "single")))


def test_json_lines_with_relative_image_paths(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), i * 50, np.uint8)).save(images / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "question": "which eye is this?", "answer": "left eye"})
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    raw = load_raw_datasets(DataTrainingArguments(train_file=str(jsonl)))
    assert isinstance(raw["train"].features["image"], datasets.Image)
    assert np.asarray(raw["train"][2]["image"])[0, 0, 0] == 100


def test_imagefolder_folder_per_split(tmp_path):
    from retina_vqa.synthetic import generate_dataset, save_dataset

    save_dataset(generate_dataset(2, 1, 1, image_size=64, num_workers=1), tmp_path / "f", format="imagefolder")
    args = DataTrainingArguments(train_file=str(tmp_path / "f" / "train"), test_file=str(tmp_path / "f" / "test"))
    raw = load_raw_datasets(args)
    assert set(raw) == {"train", "test"}
    assert {"image", "question", "answer"} <= set(raw["train"].column_names)


def test_check_columns_suggests_the_closest_column(tiny_dataset_dir):
    train = load_dataset_dir(str(tiny_dataset_dir))["train"]
    check_columns(train, "train", {"image_column": "image", "question_column": "question"})
    with pytest.raises(ValueError, match=r"--answer_column 'answers'.*Did you mean --answer_column answer\?"):
        check_columns(train, "train", {"answer_column": "answers"})


def test_check_split_lists_existing_splits(tiny_dataset_dir):
    raw = load_dataset_dir(str(tiny_dataset_dir))
    with pytest.raises(
        ValueError, match=r"--do_eval needs a 'dev' split.*\['train', 'validation', 'test'\].*--validation_split"
    ):
        check_split(raw, "dev", "--do_eval", "--validation_file")


def test_rows_to_validate_keeps_the_longest_selection_of_a_split(tiny_dataset_dir):
    test = load_dataset_dir(str(tiny_dataset_dir))["test"]
    selected = {"do_eval": ("test", test.select(range(20))), "do_predict": ("test", test.select(range(5)))}
    assert {split: len(ds) for split, ds in rows_to_validate(selected).items()} == {"test": 20}
    selected["do_predict"] = ("test", test.select(range(30)))
    assert {split: len(ds) for split, ds in rows_to_validate(selected).items()} == {"test": 30}
