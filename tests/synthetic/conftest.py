"""Fixtures shared by the synthetic generator's tests: one small generated dataset."""

from __future__ import annotations

import datasets
import pytest

from retina_vqa.synthetic import generate_dataset

SIZE = 96
SMALL = {"num_train_images": 10, "num_validation_images": 5, "num_test_images": 5, "image_size": SIZE}


@pytest.fixture(scope="session")
def small_dd() -> datasets.DatasetDict:
    """10/5/5 images at 96 px, all question types, seed 0; shared because rendering is the slow part."""
    return generate_dataset(**SMALL, seed=0, num_workers=1)
