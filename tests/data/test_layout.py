"""Image rows (each image stored once) and question rows: the same data, the same rows for every reader."""

from __future__ import annotations

import os
import subprocess
import sys

import datasets
import pytest

from retina_vqa.data import image_table
from retina_vqa.data.images import ImageLoadError, image_key, load_image
from retina_vqa.data.layout import expand_questions, is_image_rows, to_image_rows
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.synthetic import generate_dataset

from ..helpers import ROOT, common_args, losses


def _folder_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("data-*.arrow"))  # the stored data, not datasets caches


def _pixels(source) -> bytes:
    return load_image(source).tobytes()


def test_both_layouts_load_as_the_same_question_rows(tiny_dataset_dir, question_rows_dataset_dir):
    stored = datasets.load_from_disk(str(tiny_dataset_dir))
    assert is_image_rows(stored["train"]) and stored["train"].num_rows == 6
    assert not is_image_rows(datasets.load_from_disk(str(question_rows_dataset_dir))["train"])
    images, questions = load_dataset_dir(str(tiny_dataset_dir)), load_dataset_dir(str(question_rows_dataset_dir))
    for split in ("train", "validation", "test"):
        a = images[split]
        b = questions[split].cast_column("image", datasets.Image(decode=False))
        assert a.column_names == b.column_names and len(a) == len(b) == 13 * stored[split].num_rows
        assert a.remove_columns("image").to_list() == b.remove_columns("image").to_list()
        for row_a, row_b in zip(a, b, strict=True):
            assert row_a["image"]["bytes"] is None  # a reference, no copy of the image
            assert image_key(row_a["image"]) == image_key(row_b["image"])
            assert _pixels(row_a["image"]) == _pixels(row_b["image"])


def test_image_rows_take_the_disk_of_one_copy(tiny_dataset_dir, question_rows_dataset_dir):
    # 13 questions per image: question rows hold 13 copies of every image.
    assert _folder_bytes(question_rows_dataset_dir) > 8 * _folder_bytes(tiny_dataset_dir)


def test_to_image_rows_groups_an_images_questions_and_refuses_disagreeing_image_columns():
    questions = generate_dataset(2, 0, 0, image_size=64, seed=1, num_workers=1)["train"]
    grouped = to_image_rows(questions)
    assert grouped.num_rows == 2 and grouped["question_type"][0] == questions["question_type"][:13]
    again = expand_questions(grouped)
    assert again.remove_columns("image").to_list() == questions.remove_columns("image").to_list()
    broken = questions.map(lambda row, i: {"grade": i}, with_indices=True)  # grade differs within an image
    with pytest.raises(ValueError, match="question row 1: column 'grade' differs between questions of one image"):
        to_image_rows(broken)


def test_a_per_question_column_of_the_wrong_length_names_the_row():
    rows = to_image_rows(generate_dataset(2, 0, 0, image_size=64, seed=1, num_workers=1)["train"])
    short = rows.map(lambda row, i: {"answer": row["answer"][:-1] if i == 1 else row["answer"]}, with_indices=True)
    with pytest.raises(ValueError, match="image row 1: column 'answer' has 12 values for 13 questions"):
        expand_questions(short)


def test_a_reference_to_a_table_not_loaded_is_a_clear_error():
    source = {"bytes": None, "path": image_table.reference("not-loaded", 3, "ab" * 20)}
    assert image_key(source) == "ab" * 20  # the key is carried, nothing read
    with pytest.raises(ImageLoadError, match="image table not-loaded is not loaded in this process"):
        load_image(source)


def test_the_conversion_command_writes_image_rows(question_rows_dataset_dir, tmp_path):
    out = tmp_path / "converted"
    command = [sys.executable, "-m", "retina_vqa.data.layout", "--dataset_dir", str(question_rows_dataset_dir)]
    done = subprocess.run([*command, "--output_dir", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train: 6 images" in done.stdout
    assert _folder_bytes(out) * 8 < _folder_bytes(question_rows_dataset_dir)
    converted, original = load_dataset_dir(str(out)), load_dataset_dir(str(question_rows_dataset_dir))
    assert converted["test"].remove_columns("image").to_list() == original["test"].remove_columns("image").to_list()
    refused = subprocess.run([*command, "--output_dir", str(out)], capture_output=True, text=True)
    assert refused.returncode == 2 and "exists" in refused.stderr


@pytest.mark.e2e
def test_both_layouts_train_to_identical_losses(tiny_dataset_dir, question_rows_dataset_dir, tmp_path):
    runs = {}
    for name, data_dir in (("image_rows", tiny_dataset_dir), ("question_rows", question_rows_dataset_dir)):
        output_dir = tmp_path / name
        args = [*common_args(data_dir, output_dir), "--do_train", "--max_steps", "6", "--save_strategy", "no"]
        done = subprocess.run(
            [sys.executable, str(ROOT / "run_vqa.py"), *args, "--plot", "false"],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = losses(output_dir)
    assert len(runs["image_rows"]) == 6
    assert runs["image_rows"] == runs["question_rows"]
