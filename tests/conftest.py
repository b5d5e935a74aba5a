"""Shared fixtures: the shipped tiny BLIP processor and a small synthetic RetinaVQA set on disk (helpers the tests share
are in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The shared comparison helpers report their values on failure, as a test's own assertions do.
pytest.register_assert_rewrite("tests.same_answers", "tests.helpers")

# Everything here runs offline and without tracking services (set before transformers and the hub client read it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .helpers import TINY_CONFIG  # noqa: E402


@pytest.fixture(scope="session")
def tiny_processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """6/3/3 images at 64 px, 13 questions each, saved as the generator saves them (image rows: each image once)."""
    from retina_vqa.synthetic import generate_dataset, save_dataset

    path = tmp_path_factory.mktemp("data") / "retinavqa"
    save_dataset(generate_dataset(6, 3, 3, image_size=64, seed=0, num_workers=1), path)
    return path


@pytest.fixture(scope="session")
def question_rows_dataset_dir(tmp_path_factory) -> Path:
    """The same data in question rows (the RetinaVQA format: one row and one image copy per question)."""
    from retina_vqa.synthetic import generate_dataset

    path = tmp_path_factory.mktemp("data") / "retinavqa-question-rows"
    generate_dataset(6, 3, 3, image_size=64, seed=0, num_workers=1).save_to_disk(str(path))
    return path
