"""Fixtures shared by the synthetic generator's tests: one small generated dataset of each kind."""

from __future__ import annotations

import datasets
import pytest

from retina_vqa.synthetic import generate_dataset

SIZE = 96
SMALL = {"num_train_images": 10, "num_validation_images": 5, "num_test_images": 5, "image_size": SIZE}
# Every condition, each in half of the images: enough images that every stage question has a few of each answer.
MULTI = {
    "num_train_images": 30,
    "num_validation_images": 5,
    "num_test_images": 5,
    "image_size": SIZE,
    "conditions": "all",
    "prevalence": "glaucoma=0.5,amd=0.5,hypertensive=0.5,rvo=0.5",
}


@pytest.fixture(scope="session")
def small_dd() -> datasets.DatasetDict:
    """10/5/5 images at 96 px, all question types, seed 0; shared because rendering is the slow part."""
    return generate_dataset(**SMALL, seed=0, num_workers=1)


@pytest.fixture(scope="session")
def multi_dd() -> datasets.DatasetDict:
    """30/5/5 images at 96 px with every condition, paraphrased, all multi-disease question types, seed 4."""
    return generate_dataset(**MULTI, seed=4, paraphrase=True, num_workers=1)


@pytest.fixture(scope="session")
def multi_rows(multi_dd) -> list[dict]:
    """Every row of every split of ``multi_dd`` without its image."""
    rows = []
    for split in multi_dd:
        cols = multi_dd[split].remove_columns("image").to_dict()
        rows += [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]
    return rows
