"""Fixtures shared by the synthetic generator's tests: one small generated dataset of each kind."""

from __future__ import annotations

import datasets
import pytest

from retina_vqa.synthetic import generate_dataset

from .helpers import MULTI, SMALL


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
