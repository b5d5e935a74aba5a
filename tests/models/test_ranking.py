"""Ranked answers: candidate scores equal the model's own loss per candidate, for every family; batched equals one at
a time; BLIP's first-token pre-selection; the candidate lists (training split, files, saved) and the answering API."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from retina_vqa.answering.candidates import ALL_QUESTIONS, AnswerCandidates, candidates_for_run, load_answer_candidates
from retina_vqa.answering.plan import RankingPlan, WithAnswerSets
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.inference import answer_questions, prompt_batch
from retina_vqa.models.blip import set_label_smoothing
from retina_vqa.models.ranking import blip_prefix, prompt_prefix, score_candidates, tokenize_candidates
from retina_vqa.questions import DIAGNOSIS_ANSWERS

from ..helpers import make_tiny_model
from .test_blip2 import build

QUESTIONS = ["what is the diagnosis?", "is there any abnormality in the left eye of this patient?", "which eye?"]
ANSWERS = [
    list(DIAGNOSIS_ANSWERS),
    ["yes", "no"],
    ["left eye", "right eye", "yes, moderate diabetic retinopathy can threaten sight"],
]


# The test models are initialised wide (so that their answers vary), which makes T5 (no 1/sqrt(d) attention scale)
# amplify float32 rounding: the same candidate scored in a padded or unpadded decoder pass differs by ~5e-5 of its
# score there. A wrong score (a token left out, an off-by-one shift, smoothing) is off by whole units.
PROMPT_TOLERANCE = {"rtol": 2e-4, "atol": 1e-3}


def images(count: int, seed: int = 1) -> list[Image.Image]:
    generator = np.random.default_rng(seed)
    return [Image.fromarray(generator.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]


def blip_scores(model, processor, questions, pixel_values, candidate_sets, **kwargs):
    text = processor.tokenizer(questions, padding=True, return_tensors="pt")
    prefix = blip_prefix(model, text.input_ids, text.attention_mask, pixel_values=pixel_values)
    return score_candidates(prefix, candidate_sets, **kwargs)


def test_blip_scores_are_the_models_unsmoothed_loss_of_each_candidate_alone(tiny_processor):
    """Score = minus the summed token loss that BlipForQuestionAnswering's own forward computes for that candidate
    ([DEC] answer [SEP], labels on answer and [SEP]), with the label smoothing of training switched off."""
    model = make_tiny_model()
    set_label_smoothing(model, 0.1)  # as run_vqa.py trains: ranking must not see it
    pixels = tiny_processor.image_processor(images=images(3), return_tensors="pt")["pixel_values"]
    sets = [tokenize_candidates(answers, tiny_processor) for answers in ANSWERS]
    ranked = blip_scores(model, tiny_processor, QUESTIONS, pixels, sets)

    tokenizer = tiny_processor.tokenizer
    smoothed_differs = False
    for i, question in enumerate(QUESTIONS):
        inputs = tokenizer(question, return_tensors="pt")
        for c, answer in enumerate(ANSWERS[i]):
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            decoder_ids = torch.tensor([[tokenizer.bos_token_id, *answer_ids, tokenizer.sep_token_id]])
            labels = decoder_ids.clone()
            labels[:, 0] = -100
            losses = {}
            for smoothing in (0.0, 0.1):
                set_label_smoothing(model, smoothing)
                with torch.no_grad():
                    out = model(inputs.input_ids, pixels[i : i + 1], decoder_input_ids=decoder_ids, labels=labels)
                losses[smoothing] = out.loss.item() * (labels != -100).sum().item()  # mean -> sum over tokens
            torch.testing.assert_close(ranked[i][c].item(), -losses[0.0], rtol=1e-5, atol=1e-4)
            smoothed_differs |= abs(losses[0.1] - losses[0.0]) > 1e-2
    assert smoothed_differs  # the check above would catch a smoothed score


@pytest.mark.parametrize("family", ["opt", "t5", "instructblip"])
def test_prompt_family_scores_are_the_models_loss_of_each_candidate_alone(family):
    """BLIP-2 (decoder-only OPT: the prompt's cache continued; encoder-decoder T5) and InstructBLIP: score = minus
    the summed loss of the model's own forward on prompt + candidate, labels on the candidate and eos only."""
    model, processor, layout = build(family)
    pictures = images(3)
    sets = [tokenize_candidates(answers, processor, layout) for answers in ANSWERS]
    batch = prompt_batch(model, processor, QUESTIONS, pictures, layout=layout)
    if layout.decoder_only:
        assert (batch["attention_mask"][:, 0] == 0).any(), "prompts of different lengths, padded on the left"
    ranked = score_candidates(prompt_prefix(model, layout, **batch), sets)
    for i, question in enumerate(QUESTIONS):
        for c in range(len(ANSWERS[i])):
            answer_ids = sets[i].targets[c, : int(sets[i].mask[c].sum())].tolist()
            alone = prompt_batch(model, processor, [question], [pictures[i]], layout=layout, answer_ids=[answer_ids])
            with torch.no_grad():
                loss = model(**alone).loss.item() * (alone["labels"] != -100).sum().item()
            torch.testing.assert_close(ranked[i][c].item(), -loss, **PROMPT_TOLERANCE)


@pytest.mark.parametrize("family", ["blip", "opt", "t5", "instructblip"])
def test_batched_scores_equal_one_question_at_a_time(family, tiny_processor):
    pictures = images(3, seed=2)
    if family == "blip":
        model, processor, layout = make_tiny_model(), tiny_processor, None
    else:
        model, processor, layout = build(family)
    sets = [tokenize_candidates(answers, processor, layout) for answers in ANSWERS]

    def scores(rows: list[int], max_pairs: int = 256) -> list[torch.Tensor]:
        questions = [QUESTIONS[i] for i in rows]
        if layout is None:
            pixels = processor.image_processor(images=[pictures[i] for i in rows], return_tensors="pt")["pixel_values"]
            return blip_scores(model, processor, questions, pixels, [sets[i] for i in rows], max_pairs=max_pairs)
        batch = prompt_batch(model, processor, questions, [pictures[i] for i in rows], layout=layout)
        return score_candidates(prompt_prefix(model, layout, **batch), [sets[i] for i in rows], max_pairs=max_pairs)

    batched = scores([0, 1, 2], max_pairs=4)  # several decoder passes, a question's candidates split between two
    tolerance = {"rtol": 1e-5, "atol": 1e-4} if layout is None else PROMPT_TOLERANCE
    for i in range(3):
        torch.testing.assert_close(batched[i], scores([i])[0], **tolerance)
    assert len({round(float(s.max()), 3) for s in batched}) == 3  # the questions score differently


def test_long_lists_are_preselected_by_the_first_token(tiny_processor):
    """Lists longer than top_k: only the top_k candidates with the most likely first token are scored (in full,
    with the same score as without pre-selection); the others get -inf, probability 0."""
    model = make_tiny_model()
    answers = ["yes", "no", "left eye", "right eye", "mild dr", "severe dr", "healthy retina", "zero", "one", "two"]
    candidates = tokenize_candidates(answers, tiny_processor)
    pixels = tiny_processor.image_processor(images=images(1), return_tensors="pt")["pixel_values"]
    full = blip_scores(model, tiny_processor, QUESTIONS[:1], pixels, [candidates], top_k=None)[0]
    cut = blip_scores(model, tiny_processor, QUESTIONS[:1], pixels, [candidates], top_k=3)[0]
    text = tiny_processor.tokenizer(QUESTIONS[:1], return_tensors="pt")
    prefix = blip_prefix(model, text.input_ids, text.attention_mask, pixel_values=pixels)
    first = prefix.first_token_log_probs(torch.tensor([0]))[0][candidates.targets[:, 0]]
    kept = set(first.topk(3).indices.tolist())
    assert {i for i, s in enumerate(cut.tolist()) if s > float("-inf")} == kept
    torch.testing.assert_close(cut[sorted(kept)], full[sorted(kept)])
    assert full.isfinite().all() and len(kept) == 3


def test_rank_mode_answers_are_candidates_with_probabilities_that_sum_to_one(tiny_processor):
    model = make_tiny_model()
    pictures = images(4, seed=3)
    questions = ["what is the diagnosis?", "how would you grade this retina?", "is there any abnormality?", "why?"]
    candidates = AnswerCandidates(
        answers={"diagnosis": DIAGNOSIS_ANSWERS, "abnormality": ("yes", "no"), "cause": ("none", "diabetes")},
        closed={"cause": False},
        questions={"what is the diagnosis?": "diagnosis", "is there any abnormality?": "abnormality"},
        temperatures={"diagnosis": 2.0},
    )
    types = [None, "diagnosis", None, "cause"]  # the dataset's column names the paraphrase's type

    def ask(mode: str, rows: list[int]) -> list[dict]:
        return answer_questions(
            model,
            tiny_processor,
            [pictures[i] for i in rows],
            [questions[i] for i in rows],
            max_new_tokens=6,
            answer_mode=mode,
            answer_candidates=candidates,
            return_scores=True,
            question_types=[types[i] for i in rows],
        )

    for mode, generated in (("rank", set()), ("auto", {3})):
        for i, result in enumerate(ask(mode, [0, 1, 2, 3])):
            assert result["question"] == questions[i]
            assert result["question_type"] == ["diagnosis", "diagnosis", "abnormality", "cause"][i]
            if i in generated:  # an open type in auto mode
                assert result["answer_scores"] is None
                continue
            scores = result["answer_scores"]
            assert set(scores) == set(candidates.answers[result["question_type"]])
            assert result["answer"] == next(iter(scores))  # the most likely, listed first
            assert list(scores.values()) == sorted(scores.values(), reverse=True)
            assert sum(scores.values()) == pytest.approx(1.0)
    # The diagnosis temperature flattens the probabilities: same order, lower top probability.
    scaled = ask("rank", [0])[0]["answer_scores"]
    candidates.temperatures = {}
    plain = ask("rank", [0])[0]["answer_scores"]
    assert list(scaled) == list(plain) and max(scaled.values()) < max(plain.values())
    # By default every answer is generated, as before.
    generated = answer_questions(model, tiny_processor, pictures[:2], questions[:2], max_new_tokens=6)
    assert generated == [r["answer"] for r in ask("generate", [0, 1])]


def test_ranking_without_candidates_says_how_to_get_them(tiny_processor):
    model = make_tiny_model()
    with pytest.raises(ValueError, match="answer_candidates"):
        answer_questions(model, tiny_processor, images(1)[0], "what is the diagnosis?", answer_mode="auto")
    with pytest.raises(ValueError, match="answer_mode"):
        answer_questions(model, tiny_processor, images(1)[0], "what is the diagnosis?", answer_mode="guess")


# ---------------------------------------------------------------------------------------------------------
# Candidate lists
# ---------------------------------------------------------------------------------------------------------


def test_candidates_from_the_training_split(tiny_dataset_dir):

    train = load_dataset_dir(str(tiny_dataset_dir))["train"]
    candidates = AnswerCandidates.from_dataset(train.remove_columns("image"))
    rows = train.select_columns(["question", "answer", "question_type", "answer_type"]).to_dict()
    for question_type in set(rows["question_type"]):
        answers = {a for a, t in zip(rows["answer"], rows["question_type"], strict=True) if t == question_type}
        assert set(candidates.answers[question_type]) == answers  # 6 images: every type has few answers
        kinds = {k for k, t in zip(rows["answer_type"], rows["question_type"], strict=True) if t == question_type}
        assert candidates.closed[question_type] == (kinds == {"closed"})
    assert not candidates.closed["blindness"] and candidates.closed["diagnosis"]
    # Every training wording (paraphrases too) maps to its type.
    for question, question_type in zip(rows["question"], rows["question_type"], strict=True):
        assert candidates.question_type(question.upper() + "  ") == question_type
    assert candidates.set_for("what is the diagnosis?", mode="auto") == "diagnosis"
    assert candidates.set_for("can this condition cause blindness?", mode="auto") is None
    assert candidates.set_for("can this condition cause blindness?", mode="rank") == "blindness"
    assert candidates.set_for("what colour is the sky?", mode="rank") is None
    assert candidates.set_for("what is the diagnosis?", mode="generate") is None
    # A type whose answers form a larger set than max_answers gets no list.
    small = AnswerCandidates.from_dataset(train.remove_columns("image"), max_answers=2)
    assert "diagnosis" not in small.answers and small.answers["abnormality"]
    # Most frequent first; answers that normalise alike are one candidate in their most frequent spelling.
    made = AnswerCandidates.from_dataset(
        {"question": ["q?"] * 5, "answer": ["Yes", "yes", "yes.", "no", "yes"], "question_type": ["t"] * 5}
    )
    assert made.answers == {"t": ("yes", "no")} and made.closed == {"t": True}


def test_candidate_files_and_saved_lists(tmp_path):
    base = AnswerCandidates(answers={"diagnosis": ("a", "b")}, questions={"What is the diagnosis?": "diagnosis"})
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(["yes", "no", "yes"]))
    loaded = AnswerCandidates.from_file(flat, base=base)
    assert loaded.answers == {ALL_QUESTIONS: ("yes", "no")}
    assert loaded.set_for("anything at all?", mode="auto") == ALL_QUESTIONS
    per_type = tmp_path / "types.json"
    per_type.write_text(json.dumps({"diagnosis": ["mild dr", "severe dr"]}))
    loaded = AnswerCandidates.from_file(per_type, base=base)
    assert loaded.set_for("what is the diagnosis?") == "diagnosis" and loaded.closed["diagnosis"]

    saved = AnswerCandidates(
        answers={"diagnosis": ("a", "b"), "eye": ("left", "right")},
        closed={"eye": False},
        questions={"which eye?": "eye"},
        temperatures={"diagnosis": 1.5},
    )
    saved.save(tmp_path / "model")
    again = load_answer_candidates(tmp_path / "model")
    assert again.to_dict() == saved.to_dict()
    assert AnswerCandidates.from_file(tmp_path / "model" / "answer_candidates.json").temperatures == {"diagnosis": 1.5}
    assert load_answer_candidates(tmp_path) is None  # a folder without lists
    # Temperatures carry over to lists that did not change only.
    fresh = AnswerCandidates(answers={"diagnosis": ("a", "b"), "eye": ("left", "right", "both")})
    assert fresh.with_temperatures_from(saved).temperatures == {"diagnosis": 1.5}
    # ... and never to a model a run trains: they were fitted to the starting weights.
    import datasets

    train = datasets.Dataset.from_dict(
        {"question": ["q?", "q?"], "answer": ["a", "b"], "question_type": ["diagnosis"] * 2}
    )
    evaluated = candidates_for_run(None, train, str(tmp_path / "model"))
    trained = candidates_for_run(None, train, str(tmp_path / "model"), training=True)
    assert evaluated.temperatures == {"diagnosis": 1.5} and trained.temperatures == {}

    # A list given with repeats (or spellings equal after normalisation) keeps each answer once, in its first
    # spelling: probabilities stay one per answer and sum to 1.
    repeated = AnswerCandidates(answers={"t": ["Yes", "no", "yes", "maybe", "no."]})
    assert repeated.answers == {"t": ("Yes", "no", "maybe")}
    probabilities = repeated.probabilities("t", [-1.0, -0.8, -2.0])
    assert list(probabilities) == ["no", "Yes", "maybe"] and sum(probabilities.values()) == pytest.approx(1.0)

    bad = tmp_path / "bad.json"
    for content, message in (
        ("{not json", "not valid JSON"),
        (json.dumps({"diagnosis": "mild dr"}), "'diagnosis' must be a list"),
        (json.dumps({"diagnosis": []}), "is empty"),
        (json.dumps(3), "list of answers"),
    ):
        bad.write_text(content)
        with pytest.raises(ValueError, match=message) as error:
            AnswerCandidates.from_file(bad)
        assert str(bad) in str(error.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        AnswerCandidates.from_file(tmp_path / "missing.json")


def test_temperatures_carry_over_to_the_same_answers_in_any_order(tmp_path, caplog):
    """A list holds the same answers when they are equal as sets after answer normalisation: order (training
    frequency, which another split changes), spelling and tuple-or-list do not matter."""
    import datasets

    saved = AnswerCandidates(
        answers={"diagnosis": ("healthy retina", "mild dr", "severe dr"), "eye": ("left", "right")},
        questions={"what is the diagnosis?": "diagnosis", "which eye?": "eye"},
        temperatures={"diagnosis": 1.5, "eye": 0.7},
    )
    saved.save(tmp_path / "model")
    loaded = load_answer_candidates(tmp_path / "model")  # lists read back from JSON
    fresh = AnswerCandidates(answers={"diagnosis": ("severe dr", "Mild DR", " healthy retina"), "eye": ("right",)})
    fresh.answers["diagnosis"] = list(fresh.answers["diagnosis"])  # a list on one side, a tuple on the other
    with caplog.at_level(logging.WARNING, logger="retina_vqa"):
        assert fresh.with_temperatures_from(loaded).temperatures == {"diagnosis": 1.5}
    # The dropped temperature is named, with why.
    (record,) = [r for r in caplog.records if "not carried over" in r.getMessage()]
    assert "'eye'" in record.getMessage() and "'diagnosis'" not in record.getMessage()
    assert "only in" in record.getMessage() and "left" in record.getMessage()

    # A split whose answers come in another frequency order: an evaluation keeps the saved temperatures.
    train = datasets.Dataset.from_dict(
        {
            "question": ["what is the diagnosis?"] * 4 + ["which eye?"] * 3,
            "answer": ["severe dr", "severe dr", "mild dr", "healthy retina", "right", "right", "left"],
            "question_type": ["diagnosis"] * 4 + ["eye"] * 3,
        }
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retina_vqa"):
        evaluated = candidates_for_run(None, train, str(tmp_path / "model"))
    assert evaluated.answers["diagnosis"][0] == "severe dr"
    assert evaluated.temperatures == {"diagnosis": 1.5, "eye": 0.7}
    assert not [r for r in caplog.records if "not carried over" in r.getMessage()]
    # A training run still starts without them (they were fitted to the starting weights), and says so.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retina_vqa"):
        assert candidates_for_run(None, train, str(tmp_path / "model"), training=True).temperatures == {}
    assert "not carried over" in caplog.text


def test_answer_list_files_keep_the_temperatures_of_the_lists_they_repeat(tmp_path, caplog):
    model = tmp_path / "model"
    AnswerCandidates(
        answers={ALL_QUESTIONS: ("yes", "no"), "diagnosis": ("mild dr", "severe dr")},
        questions={"what is the diagnosis?": "diagnosis"},
        temperatures={ALL_QUESTIONS: 2.0, "diagnosis": 1.5},
    ).save(model)
    saved = load_answer_candidates(model)
    # A plain list is the list of every question: it keeps the temperature of that list.
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(["No", "yes"]))
    with caplog.at_level(logging.WARNING, logger="retina_vqa"):
        assert AnswerCandidates.from_file(flat, base=saved).temperatures == {ALL_QUESTIONS: 2.0}
    (record,) = [r for r in caplog.records if "not carried over" in r.getMessage()]
    assert "'diagnosis'" in record.getMessage() and str(flat) in record.getMessage()
    # Per type, in another order.
    per_type = tmp_path / "types.json"
    per_type.write_text(json.dumps({"diagnosis": ["severe dr", "mild dr"]}))
    assert AnswerCandidates.from_file(per_type, base=saved).temperatures == {"diagnosis": 1.5}
    # run_vqa.py's evaluation with --answer_list: the same, warned about once.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retina_vqa"):
        evaluated = candidates_for_run(str(per_type), None, str(model))
    assert evaluated.temperatures == {"diagnosis": 1.5}
    assert len([r for r in caplog.records if "not carried over" in r.getMessage()]) == 1
    # ... and a training run with --answer_list does not take them either.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retina_vqa"):
        assert candidates_for_run(str(per_type), None, str(model), training=True).temperatures == {}
    assert "not carried over" in caplog.text


def test_evaluation_plan_and_collator(tiny_processor):
    candidates = AnswerCandidates(
        answers={"diagnosis": DIAGNOSIS_ANSWERS, "cause": ("none", "diabetes")},
        closed={"cause": False},
        questions={"what is the diagnosis?": "diagnosis", "why?": "cause"},
    )
    plan = RankingPlan.build(candidates, tiny_processor, max_target_tokens=3)
    assert plan.width == 5
    assert plan.row_sets(candidates, ["what is the diagnosis?", "why?", "who?"], None, "auto") == [0, -1, -1]
    assert plan.row_sets(candidates, ["what is the diagnosis?", "why?", "who?"], None, "rank") == [0, 1, -1]
    # Cut as training cuts answers: max_target_tokens counts the end token.
    assert (
        int(plan.sets[0].mask.sum(1).max()) <= 3
        and plan.sets[0].targets[0, -1] == tiny_processor.tokenizer.sep_token_id
    )
    answer = plan.sets[0].output_ids(0)
    assert answer[0] == tiny_processor.tokenizer.bos_token_id and answer[-1] == tiny_processor.tokenizer.sep_token_id

    class Inner:
        share_images = True

        def __call__(self, features):
            return {"input_ids": torch.tensor([f["input_ids"] for f in features])}

    collate = WithAnswerSets(Inner())
    assert collate.share_images  # the Trainer asks the wrapped collator
    batch = collate([{"input_ids": [1], "answer_set": 0}, {"input_ids": [2], "answer_set": -1}])
    assert batch["answer_set"].tolist() == [0, -1]
    assert "answer_set" not in collate([{"input_ids": [1]}])
