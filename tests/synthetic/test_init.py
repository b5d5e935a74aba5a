"""Tests for the package surface of retina_vqa.synthetic: the names code outside the package imports."""

from __future__ import annotations

import pytest

import retina_vqa.synthetic as synthetic
from retina_vqa import questions


def test_reexports_names_imported_elsewhere():
    # Imported by retina_vqa (visualize, tiny_blip), bench/ and tests/ as `from retina_vqa.synthetic import ...`.
    for name in (
        "generate_dataset",
        "save_dataset",
        "QUESTION_TYPES",
        "all_texts",
        "FOV_RADIUS_FRACTION",
        "DIAGNOSIS_ANSWERS",
        "render_fundus",
        "dataset_features",
        "main",
        "build_parser",
        "render_preview",
    ):
        assert hasattr(synthetic, name), name
    for name in synthetic.__all__:
        assert hasattr(synthetic, name), name


def test_catalogue_is_the_questions_module():
    assert synthetic.QUESTION_TYPES is questions.QUESTION_TYPES
    assert synthetic.all_texts is questions.all_texts
    assert synthetic.PRESENCE_TYPES is questions.PRESENCE_TYPES


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no_such_name"):
        synthetic.no_such_name  # noqa: B018
