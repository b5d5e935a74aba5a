"""Tests for the question and answer catalogue (retina_vqa.questions)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from retina_vqa.questions import (
    BLINDNESS_ANSWERS,
    CAUSE_ANSWERS,
    DIAGNOSIS_ANSWERS,
    GRADED_QUESTION_TYPES,
    LABEL_QUESTION_TYPES,
    LESION_TYPES,
    MACULAR_OEDEMA_ANSWERS,
    PRESENCE_TYPES,
    QUESTION_TYPES,
    all_texts,
    answer_for,
    count_haemorrhage_quadrants,
    graded_answer_for,
    graded_question,
    graded_texts,
    haemorrhage_quadrant,
)
from retina_vqa.synthetic import generate_dataset


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
    long_answers = [t for t in BLINDNESS_ANSWERS + CAUSE_ANSWERS if len(t.split()) > 3]
    assert long_answers and all(15 <= len(t.split()) <= 30 for t in long_answers)


def test_all_texts_cover_generated_rows():
    dd = generate_dataset(5, 0, 0, image_size=64, seed=3, paraphrase=True, num_workers=1)
    cols = dd["train"].select_columns(["question", "answer"]).to_dict()
    texts = set(all_texts(paraphrase=True))
    assert set(cols["question"]) <= texts
    assert set(cols["answer"]) <= texts
    assert not set(all_texts(paraphrase=True)) <= set(all_texts(paraphrase=False))


def test_diagnosis_answers():
    assert DIAGNOSIS_ANSWERS == ("healthy retina", "mild dr", "moderate dr", "severe dr", "proliferative dr")


def test_presence_types_name_question_types_and_lesion_types():
    assert set(PRESENCE_TYPES) <= set(QUESTION_TYPES)
    for kinds in PRESENCE_TYPES.values():
        assert kinds and set(kinds) <= set(LESION_TYPES)


def test_haemorrhage_quadrants_follow_laterality():
    # Temporal is away from the disc: left half of a right eye, right half of a left eye.
    assert haemorrhage_quadrant(10, 10, 100, "right") == "superior-temporal"
    assert haemorrhage_quadrant(10, 10, 100, "left") == "superior-nasal"
    assert haemorrhage_quadrant(90, 90, 100, "right") == "inferior-nasal"
    boxes = [
        {"type": "haemorrhage", "x0": 5, "y0": 5, "x1": 15, "y1": 15},
        {"type": "haemorrhage", "x0": 8, "y0": 8, "x1": 12, "y1": 12},  # same quadrant
        {"type": "preretinal_haemorrhage", "x0": 80, "y0": 80, "x1": 95, "y1": 95},
        {"type": "hard_exudate", "x0": 80, "y0": 5, "x1": 95, "y1": 15},  # not a haemorrhage
    ]
    assert count_haemorrhage_quadrants(boxes, 100, "right") == 2
    assert answer_for("haemorrhage_quadrants", 3, "right", "good", boxes, 100) == "two"
    assert answer_for("haemorrhages", 3, "right", "good", boxes, 100) == "yes"
    assert answer_for("microaneurysms", 3, "right", "good", boxes, 100) == "no"


def test_answer_for_metadata_answers():
    assert answer_for("diagnosis", 2, "left", "good", [], 64) == "moderate dr"
    assert answer_for("laterality", 0, "left", "good", [], 64) == "left eye"
    assert answer_for("quality", 0, "left", "blurred", [], 64) == "no"
    with pytest.raises(ValueError, match="unknown question type"):
        answer_for("colour", 0, "left", "good", [], 64)


def test_graded_question_types_stay_out_of_the_synthetic_catalogue():
    # The synthetic generator iterates QUESTION_TYPES and the tiny vocabulary is built from all_texts(): both
    # stay as they were, so synthetic data and configs/blip-tiny do not change.
    assert not set(GRADED_QUESTION_TYPES) & set(QUESTION_TYPES)
    assert set(LABEL_QUESTION_TYPES) <= set(QUESTION_TYPES) | set(GRADED_QUESTION_TYPES)
    assert not set(LABEL_QUESTION_TYPES) & (set(PRESENCE_TYPES) | {"haemorrhage_quadrants"})  # no lesion questions
    assert set(graded_texts()) - set(all_texts()) == {
        *(t for info in GRADED_QUESTION_TYPES.values() for t in info["paraphrases"]),
        *MACULAR_OEDEMA_ANSWERS.values(),
    }
    for question_type in LABEL_QUESTION_TYPES:
        info = graded_question(question_type)
        assert info["paraphrases"][0] == info["question"] and 3 <= len(info["paraphrases"]) <= 5
        assert all(t == t.lower() for t in info["paraphrases"])


@pytest.mark.parametrize("grade", range(5))
def test_graded_answers_equal_the_synthetic_answers_and_follow_the_grade(grade):
    for question_type in ("modality", "abnormality", "diagnosis", "blindness", "cause"):
        assert graded_answer_for(question_type, grade) == answer_for(question_type, grade, "left", "good", [], 64)
    assert graded_answer_for("referable_dr", grade) == ("yes" if grade >= 2 else "no")
    assert graded_answer_for("laterality", grade, laterality="right") == "right eye"
    assert graded_answer_for("quality", grade) == "yes"


def test_graded_answers_for_oedema_and_ungradable_images():
    assert [graded_answer_for("macular_oedema", 0, macular_oedema=k) for k in ("none", "low", "high", "not_high")] == [
        "no risk",
        "low risk",
        "high risk",
        "no or low risk",
    ]
    assert graded_answer_for("quality", None) == "no"
    assert graded_answer_for("modality", None) == "color fundus photography"
    with pytest.raises(ValueError, match="needs an ICDR grade"):
        graded_answer_for("diagnosis", None)
    with pytest.raises(ValueError, match="macular_oedema must be one of"):
        graded_answer_for("macular_oedema", 2)
    with pytest.raises(ValueError, match="unknown question type 'microaneurysms'"):
        graded_answer_for("microaneurysms", 2)


def test_graded_texts_tokenise_with_the_tiny_vocabulary_without_unknown_tokens():
    from transformers import AutoProcessor

    from .helpers import TINY_CONFIG

    tokenizer = AutoProcessor.from_pretrained(TINY_CONFIG).tokenizer
    for text in graded_texts(paraphrase=True):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_catalogue_imports_neither_numpy_nor_pillow():
    # Builders of real datasets import the catalogue; it must stay free of the drawing stack.
    code = "import sys, retina_vqa.questions; print(sorted({'numpy', 'PIL'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
