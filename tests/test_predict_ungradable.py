"""Ungradable images in predict and the Python API: when the model answers "no" to an image's quality question, its
screening outcome is "ungradable: re-image" instead of a grade's referral; the answers themselves stay.

The model's quality answer is forced with a one-answer candidate list (ranking can only choose it), on a random
tiny BLIP saved like run_vqa.py saves one, with operating points that refer every gradable eye."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retina_vqa.answering.candidates import AnswerCandidates
from retina_vqa.inference import add_referrals, answer_questions, load_for_inference
from retina_vqa.metrics.gradability import UNGRADABLE_OUTCOME
from retina_vqa.metrics.screening import OperatingPoint, save_operating_points
from retina_vqa.models.generation_config import configure_answer_generation
from retina_vqa.predict import main
from retina_vqa.questions import DIAGNOSIS_ANSWERS, QUESTION_TYPES

from .helpers import TINY_CONFIG, make_tiny_model
from .test_predict import fundus

QUALITY = QUESTION_TYPES["quality"]["question"]
DIAGNOSIS = QUESTION_TYPES["diagnosis"]["question"]
ABNORMALITY = QUESTION_TYPES["abnormality"]["question"]
# A threshold of 0 refers every gradable eye, whatever the image.
POINTS = [OperatingPoint("high_sensitivity", 0.9, 0.0, 1.0, 0.0)]


def forced(quality_answer: str) -> AnswerCandidates:
    """Candidate lists that make the model answer the quality question `quality_answer` and rank the grade."""
    return AnswerCandidates(
        answers={"quality": (quality_answer,), "diagnosis": DIAGNOSIS_ANSWERS},
        questions={QUALITY: "quality", DIAGNOSIS: "diagnosis"},
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny BLIP saved with its processor and operating points."""
    from transformers import AutoProcessor

    path = tmp_path_factory.mktemp("model") / "out"
    model = make_tiny_model(init_range=0.5, seed=0)
    configure_answer_generation(model, 8, num_beams=1)
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(TINY_CONFIG).save_pretrained(path)
    save_operating_points(POINTS, path)
    return path


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "fundus.png"
    fundus().save(path)
    return path


def test_the_api_says_ungradable_instead_of_a_referral(model_dir, image_path):
    model, processor = load_for_inference(model_dir, device="cpu")
    questions = [QUALITY, DIAGNOSIS, ABNORMALITY]
    common = {"answer_mode": "auto", "return_scores": True, "operating_points": POINTS, "ood_guard": False}
    quality, diagnosis, abnormality = answer_questions(
        model, processor, str(image_path), questions, answer_candidates=forced("no"), **common
    )
    assert quality["answer"] == "no"
    assert diagnosis["screening"] == UNGRADABLE_OUTCOME and "referral" not in diagnosis
    assert diagnosis["answer"] in DIAGNOSIS_ANSWERS  # the answer itself is still there
    assert "screening" not in abnormality and "screening" not in quality
    # Gradable by the model: the referral of before, and no screening outcome.
    _, diagnosis, _ = answer_questions(
        model, processor, str(image_path), questions, answer_candidates=forced("yes"), **common
    )
    assert diagnosis["referral"]["high_sensitivity"] == "refer" and "screening" not in diagnosis
    # The quality question not asked: nothing is guessed.
    (diagnosis,) = answer_questions(
        model, processor, str(image_path), [DIAGNOSIS], answer_candidates=forced("no"), **common
    )
    assert "referral" in diagnosis and "screening" not in diagnosis


def test_only_the_grading_answers_of_the_ungradable_image_change():
    scores = dict.fromkeys(DIAGNOSIS_ANSWERS, 0.2)
    answers = [
        {"question_type": "quality", "answer": "No", "answer_scores": None},
        {"question_type": "diagnosis", "answer": "mild dr", "answer_scores": scores},
        {"question_type": "referable_dr", "answer": "no", "answer_scores": None},
        {"question_type": "quality", "answer": "yes", "answer_scores": None},
        {"question_type": "diagnosis", "answer": "mild dr", "answer_scores": scores},
    ]
    add_referrals(answers, POINTS, ["eye1", "eye1", "eye1", "eye2", "eye2"])
    assert [a.get("screening") for a in answers] == [None, UNGRADABLE_OUTCOME, UNGRADABLE_OUTCOME, None, None]
    assert "referral" not in answers[1] and answers[4]["referral"]["high_sensitivity"] == "refer"
    with pytest.raises(ValueError, match="image keys"):
        add_referrals(answers, POINTS, ["eye1"])


def test_cli_prints_the_screening_outcome_instead_of_the_referral(model_dir, image_path, tmp_path, capsys):
    base = ["--model_name_or_path", str(model_dir), "--device", "cpu", "--image", str(image_path)]
    base += ["--question", QUALITY, "--question", DIAGNOSIS, "--answer_mode", "auto"]
    for answer in ("no", "yes"):
        folder = tmp_path / answer
        main([*base, "--answer_list", str(forced(answer).save(folder))])
        lines = capsys.readouterr().out.splitlines()
        assert lines[1] == f"Answer: {answer}"
        assert any(line.startswith("Answer: ") and line[8:] in DIAGNOSIS_ANSWERS for line in lines)
        if answer == "no":
            assert lines[-1] == f"Screening: {UNGRADABLE_OUTCOME}"
            assert not any(line.startswith("Referral:") for line in lines)
        else:
            assert lines[-1].startswith("Referral: P(referable)") and "high sensitivity: refer" in lines[-1]
            assert not any(line.startswith("Screening:") for line in lines)


def test_dataset_records_and_summary_carry_the_ungradable_outcome(model_dir, tiny_dataset_dir, tmp_path, capsys):
    answer_list = tmp_path / "lists.json"
    answer_list.write_text(json.dumps({"quality": ["no"], "diagnosis": list(DIAGNOSIS_ANSWERS)}))
    output = tmp_path / "predictions.jsonl"
    main(
        ["--model_name_or_path", str(model_dir), "--device", "cpu", "--dataset_dir", str(tiny_dataset_dir)]
        + ["--split", "test", "--max_samples", "26", "--answer_mode", "auto", "--answer_list", str(answer_list)]
        + ["--output_file", str(output)]
    )
    out = capsys.readouterr().out
    records = [json.loads(line) for line in output.read_text().splitlines()]
    diagnosis = [r for r in records if r["question_type"] == "diagnosis"]
    assert len(diagnosis) == 2
    for record in diagnosis:
        assert record["screening"] == UNGRADABLE_OUTCOME and "referral" not in record
    assert all("screening" not in r for r in records if r["question_type"] not in ("diagnosis",))
    images = {r["image_id"] for r in records}
    ungradable = {r["image_id"] for r in records if r["question_type"] == "quality" and r["reference"] == "no"}
    rate = len(ungradable) / len(images)
    expected = (
        f"Ungradable images: model 1.000, reference {rate:.3f} ({len(ungradable)} images; their "
        f"{len(ungradable)} grading questions left out of the grading metrics)"
    )
    assert expected in out.splitlines()
