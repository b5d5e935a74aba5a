"""Tests for retina_vqa.metrics."""

from __future__ import annotations

import json
import math
import warnings

import datasets
import numpy as np
import pytest
from transformers import BertTokenizerFast, EvalPrediction

from retina_vqa.metrics import (
    DEFAULT_DIAGNOSIS_LABELS,
    OTHER_LABEL,
    RetinaVQAMetric,
    build_compute_metrics,
    compute_vqa_metrics,
    confusion_matrix,
    corpus_bleu,
    exact_match,
    normalize_answer,
    rouge_l,
    rouge_tokenize,
    token_f1,
    token_recall,
)

# ---------------------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two dogs.", "2 dogs"),  # number word -> digit, final period stripped
        ("the yes", "yes"),  # article removed
        ("a cat", "cat"),
        ("An owl", "owl"),
        ("isnt", "isn't"),  # contraction restored
        ("I dont know!", "i don't know"),  # "!" inside the text becomes a space, then whitespace collapses
        ("3.5", "3.5"),  # period between digits kept
        ("3.5 mm.", "3.5 mm"),
        ("1,000 dogs", "1000 dogs"),  # comma between digits: all punctuation deleted, not spaced
        ("yes/no", "yes no"),  # punctuation inside a word becomes a space
        ("yes, it is", "yes it is"),  # punctuation next to a space is deleted
        ("None", "0"),  # VQA maps "none" to "0"
        ("ten", "10"),
        ("eleven", "eleven"),  # the official table stops at ten
        ("Mild DR.", "mild dr"),
        ("  Healthy \t retina\n", "healthy retina"),
        ("(small) drusen", "small drusen"),
        ("optic disc: normal", "optic disc: normal"),  # ":" is not in the official punctuation list
        ("Im", "im"),  # official table keys "Im"/"Ive" are capitalised and never match lowercased text
        ("", ""),
    ],
)
def test_normalize_answer_matches_vqa_eval(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# ---------------------------------------------------------------------------------------------------------
# Per-example scores
# ---------------------------------------------------------------------------------------------------------


def test_exact_match_uses_normalisation() -> None:
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("The Mild DR", "mild dr") == 1.0
    assert exact_match("mild dr", "moderate dr") == 0.0


def test_token_f1_hand_examples() -> None:
    # pred {there, are, hard, exudates}, ref {hard, exudates, present}: 2 common, P = 1/2, R = 2/3, F1 = 4/7.
    assert token_f1("there are hard exudates", "hard exudates present") == pytest.approx(4 / 7)
    assert token_f1("the cat", "a cat") == 1.0
    # Multiset overlap: the repeated "dr" only counts once. P = 1/3, R = 1, F1 = 1/2.
    assert token_f1("dr dr dr", "dr") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0
    assert token_f1("", "yes") == 0.0
    assert token_f1("no", "yes") == 0.0


def test_token_recall_hand_examples() -> None:
    assert token_recall("there are hard exudates", "hard exudates present") == pytest.approx(2 / 3)
    assert token_recall("dr dr", "dr dr dr") == pytest.approx(2 / 3)
    assert token_recall("hard exudates present near macula", "hard exudates") == 1.0
    assert token_recall("", "") == 1.0
    assert token_recall("yes", "") == 0.0


def test_rouge_tokenize_matches_rouge_score_default() -> None:
    assert rouge_tokenize("Drusen (small, yellow) deposits.") == ["drusen", "small", "yellow", "deposits"]
    assert rouge_tokenize("Don't  2.5mm") == ["don", "t", "2", "5mm"]


# (prediction, reference, ROUGE-L F-measure). The values were computed once with rouge_score 0.1.2:
# rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(reference, prediction)["rougeL"].fmeasure
ROUGE_L_CASES = [
    ("there are hard exudates and haemorrhages", "hard exudates, haemorrhages and microaneurysms are present",
     0.4615384615384615),
    ("Mild DR", "mild dr", 1.0),
    ("the optic disc is normal", "optic disc appears normal", 0.6666666666666665),
    ("Drusen (small, yellow) deposits.", "small yellow drusen deposits", 0.75),
    ("no", "yes", 0.0),
    ("", "yes", 0.0),
]  # fmt: skip


@pytest.mark.parametrize(("prediction", "reference", "expected"), ROUGE_L_CASES)
def test_rouge_l_reference_values(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("prediction", "reference", "expected"), ROUGE_L_CASES)
def test_rouge_l_matches_rouge_score_live(prediction: str, reference: str, expected: float) -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    assert rouge_l(prediction, reference) == pytest.approx(
        scorer.score(reference, prediction)["rougeL"].fmeasure, abs=1e-12
    )


# (predictions, references, corpus BLEU-4). The values were computed once with nltk 3.10.4:
# nltk.translate.bleu_score.corpus_bleu([[tok(r)] for r in refs], [tok(p) for p in preds]) with
# tok = rouge_score.tokenize.tokenize(text, None). Every prediction has at least 4 tokens, where nltk and the
# Papineni / Hugging Face "bleu" definition agree.
BLEU_CASES = [
    (
        [
            "the optic disc appears normal in this image",
            "hard exudates are visible near the macula",
            "there are many small haemorrhages",
        ],
        [
            "the optic disc is normal in this image",
            "hard exudates are present near the macula region",
            "there are several small haemorrhages and exudates",
        ],
        0.3146362961347184,
    ),
    (
        ["the optic disc appears normal in this image", "hard exudates are visible near the macula"],
        ["the optic disc is normal in this image", "hard exudates are present near the macula region"],
        0.39031797285542,
    ),
    # Predictions longer than the references: brevity penalty 1.
    (["a b c d e f", "x y z w v"], ["a b c d e", "x y z w"], 0.7226568811456053),
]


@pytest.mark.parametrize(("predictions", "references", "expected"), BLEU_CASES)
def test_corpus_bleu_reference_values(predictions: list[str], references: list[str], expected: float) -> None:
    assert corpus_bleu(predictions, references) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("predictions", "references", "expected"), BLEU_CASES)
def test_corpus_bleu_matches_nltk_live(predictions: list[str], references: list[str], expected: float) -> None:
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    nltk_value = bleu_score.corpus_bleu(
        [[rouge_tokenize(r)] for r in references], [rouge_tokenize(p) for p in predictions]
    )
    assert corpus_bleu(predictions, references) == pytest.approx(nltk_value, abs=1e-12)


def test_corpus_bleu_zero_precision_is_zero() -> None:
    # No matching 4-gram: exactly 0.0 (nltk returns ~1e-154 with a warning, the HF metric returns 0.0).
    assert corpus_bleu(["a b x d"], ["a b c d"]) == 0.0
    assert corpus_bleu(["no"], ["yes"]) == 0.0
    assert corpus_bleu([""], ["yes"]) == 0.0
    assert corpus_bleu([], []) == 0.0


def test_corpus_bleu_short_predictions_follow_papineni() -> None:
    # "yes" has no bigrams: it adds 0 possible n-grams of order >= 2 (HF "bleu"), so all precisions are 1.
    # nltk would count 1 possible n-gram per order for it and report a lower score.
    assert corpus_bleu(["yes", "a b c d"], ["yes", "a b c d"]) == pytest.approx(1.0)
    # Brevity penalty: c = 4, r = 5 -> exp(1 - 5/4), all precisions 1.
    assert corpus_bleu(["a b c d"], ["a b c d e"]) == pytest.approx(math.exp(1 - 5 / 4))


def test_corpus_bleu_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="predictions"):
        corpus_bleu(["a"], [])


# ---------------------------------------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------------------------------------


def test_confusion_matrix_hand_example() -> None:
    labels = ("mild dr", "moderate dr", "severe dr")
    references = ["mild dr", "mild dr", "severe dr", "unknown", "Severe DR"]
    predictions = ["Mild DR.", "moderate dr", "banana", "mild dr", "severe dr"]
    # Rows: reference label; columns: predicted label, then "other". The "unknown" reference is not counted.
    assert confusion_matrix(references, predictions, labels) == [
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 1, 1],
    ]


def test_confusion_matrix_rejects_duplicate_labels() -> None:
    with pytest.raises(ValueError, match="normalise to the same"):
        confusion_matrix([], [], ["mild dr", "Mild DR."])


# ---------------------------------------------------------------------------------------------------------
# compute_vqa_metrics
# ---------------------------------------------------------------------------------------------------------

PREDICTIONS = ["Yes", "mild DR", "moderate dr", "there are hard exudates", "no", "severe dr", "I am not sure"]
REFERENCES = [
    "yes",
    "mild dr",
    "severe dr",
    "hard exudates are present near macula",
    "yes",
    "severe dr",
    "healthy retina",
]
QUESTION_TYPES = ["presence", "diagnosis", "diagnosis", "findings", "presence", "diagnosis", "diagnosis"]
ANSWER_TYPES = ["closed", "closed", "closed", "open", "closed", "closed", "closed"]


def test_compute_vqa_metrics_hand_example() -> None:
    metrics = compute_vqa_metrics(PREDICTIONS, REFERENCES, QUESTION_TYPES, ANSWER_TYPES)

    assert metrics["num_examples"] == 7
    assert metrics["exact_match"] == pytest.approx(3 / 7)
    # Per-row token F1: 1, 1, 1/2, 3/5 (3 common of 4 vs 6 tokens), 0, 1, 0.
    assert metrics["token_f1"] == pytest.approx(4.1 / 7)
    # Per-row ROUGE-L: 1, 1, 1/2, 2/5 (LCS "hard exudates"), 0, 1, 0.
    assert metrics["rouge_l"] == pytest.approx(3.9 / 7)
    assert metrics["bleu"] == pytest.approx(corpus_bleu(PREDICTIONS, REFERENCES))

    assert metrics["closed_accuracy"] == pytest.approx(3 / 6)
    assert metrics["open_token_recall"] == pytest.approx(3 / 6)
    assert metrics["open_rouge_l"] == pytest.approx(2 / 5)
    assert metrics["open_bleu"] == 0.0  # no 4-gram in common

    assert metrics["exact_match/presence"] == pytest.approx(1 / 2)
    assert metrics["exact_match/diagnosis"] == pytest.approx(2 / 4)
    assert metrics["exact_match/findings"] == 0.0

    assert metrics["diagnosis_accuracy"] == pytest.approx(2 / 4)
    # Per-label F1 over labels seen as reference or prediction: healthy 0, mild 1, moderate 0 (predicted
    # once, never right), severe 2/3 (P = 1, R = 1/2); proliferative is absent and skipped.
    assert metrics["diagnosis_macro_f1"] == pytest.approx((0 + 1 + 0 + 2 / 3) / 4)
    confusion = {k: v for k, v in metrics.items() if k.startswith("diagnosis_confusion/")}
    assert len(confusion) == len(DEFAULT_DIAGNOSIS_LABELS) * (len(DEFAULT_DIAGNOSIS_LABELS) + 1)
    nonzero = {k: v for k, v in confusion.items() if v}
    assert nonzero == {
        "diagnosis_confusion/mild dr->mild dr": 1,
        "diagnosis_confusion/severe dr->moderate dr": 1,
        "diagnosis_confusion/severe dr->severe dr": 1,
        f"diagnosis_confusion/healthy retina->{OTHER_LABEL}": 1,
    }
    assert all(type(v) is int for v in confusion.values())

    # Grading (metrics/grading.py) of the diagnosis rows: references 1 3 3 0, answers 1 2 3 and one off the scale,
    # scored as grade 4 (farthest from 0) for kappa. Observed weighted disagreement 0 + 1 + 0 + 16 = 17; expected
    # from the marginals (refs 0, 1, 3, 3 x answers 1, 2, 3, 4) (30 + 14 + 2 * 6) / 4 = 14: kappa 1 - 17/14.
    assert metrics["diagnosis_qwk"] == pytest.approx(-3 / 14)
    assert metrics["diagnosis_non_grade_answers"] == 1
    # Referable: both severe eyes flagged (moderate, severe); the healthy eye's off-scale answer is a false alarm.
    assert metrics["diagnosis_referable_sensitivity"] == 1.0
    assert metrics["diagnosis_referable_specificity"] == pytest.approx(1 / 2)
    assert metrics["diagnosis_any_dr_sensitivity"] == 1.0
    assert metrics["diagnosis_any_dr_specificity"] == 0.0
    assert (
        0.0
        < metrics["diagnosis_referable_specificity_ci_low"]
        < 0.5
        < metrics["diagnosis_referable_specificity_ci_high"]
    )


def test_compute_vqa_metrics_values_are_json_numbers() -> None:
    metrics = compute_vqa_metrics(PREDICTIONS, REFERENCES, QUESTION_TYPES, ANSWER_TYPES)
    assert all(isinstance(k, str) for k in metrics)
    assert all(type(v) in (int, float) for v in metrics.values())
    assert json.loads(json.dumps(metrics)) == metrics


def test_compute_vqa_metrics_infers_open_closed_from_reference_length() -> None:
    given = compute_vqa_metrics(PREDICTIONS, REFERENCES, answer_types=ANSWER_TYPES)
    inferred = compute_vqa_metrics(PREDICTIONS, REFERENCES)
    # The only reference with more than 3 normalised tokens is the open one.
    for key in ("closed_accuracy", "open_token_recall", "open_rouge_l", "open_bleu"):
        assert inferred[key] == given[key]
    assert not any("/" in key for key in inferred)  # no question types: no per-type or diagnosis keys


def test_compute_vqa_metrics_answer_types_are_case_insensitive_and_checked() -> None:
    upper = compute_vqa_metrics(PREDICTIONS, REFERENCES, answer_types=[t.upper() for t in ANSWER_TYPES])
    assert upper == compute_vqa_metrics(PREDICTIONS, REFERENCES, answer_types=ANSWER_TYPES)
    with pytest.raises(ValueError, match="answer type"):
        compute_vqa_metrics(["yes"], ["yes"], answer_types=["yes/no"])


def test_compute_vqa_metrics_leaves_out_empty_groups() -> None:
    metrics = compute_vqa_metrics(["yes"], ["yes"], question_types=["presence"], answer_types=["closed"])
    assert "closed_accuracy" in metrics
    assert not any(key.startswith("open_") for key in metrics)
    assert not any(key.startswith("diagnosis") for key in metrics)
    assert metrics["exact_match/presence"] == 1.0


def test_compute_vqa_metrics_custom_diagnosis_labels() -> None:
    metrics = compute_vqa_metrics(
        ["grade 1", "grade 2"],
        ["grade 1", "grade 1"],
        question_types=["dr_grade", "dr_grade"],
        diagnosis_labels=["grade 0", "grade 1", "grade 2"],
        diagnosis_type="dr_grade",
    )
    assert metrics["diagnosis_confusion/grade 1->grade 1"] == 1
    assert metrics["diagnosis_confusion/grade 1->grade 2"] == 1
    assert metrics["diagnosis_accuracy"] == 0.5


def test_compute_vqa_metrics_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="references"):
        compute_vqa_metrics(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="question types"):
        compute_vqa_metrics(["yes"], ["yes"], question_types=["a", "b"])


def test_compute_vqa_metrics_empty() -> None:
    metrics = compute_vqa_metrics([], [])
    assert metrics == {"num_examples": 0, "exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0, "bleu": 0.0}


# ---------------------------------------------------------------------------------------------------------
# evaluate.Metric wrapper
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
def test_retina_vqa_metric_equals_function(tmp_path, in_memory: bool) -> None:
    kwargs = {"keep_in_memory": True} if in_memory else {"cache_dir": str(tmp_path)}
    metric = RetinaVQAMetric(**kwargs)
    metric.add_batch(predictions=PREDICTIONS[:4], references=REFERENCES[:4])
    metric.add_batch(predictions=PREDICTIONS[4:], references=REFERENCES[4:])
    result = metric.compute(question_types=QUESTION_TYPES, answer_types=ANSWER_TYPES)
    assert result == compute_vqa_metrics(PREDICTIONS, REFERENCES, QUESTION_TYPES, ANSWER_TYPES)


def test_retina_vqa_metric_direct_compute() -> None:
    metric = RetinaVQAMetric(keep_in_memory=True)
    assert metric.compute(predictions=PREDICTIONS, references=REFERENCES) == compute_vqa_metrics(
        PREDICTIONS, REFERENCES
    )


# ---------------------------------------------------------------------------------------------------------
# build_compute_metrics
# ---------------------------------------------------------------------------------------------------------

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "yes",
    "no",
    "mild",
    "moderate",
    "dr",
    "healthy",
    "retina",
]
PAD, CLS, SEP, YES, MILD, MODERATE, DR = 0, 2, 3, 5, 7, 8, 9


@pytest.fixture
def tokenizer(tmp_path) -> BertTokenizerFast:
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(tmp_path))


# Generated ids (with the [CLS] start token and [PAD] after [SEP]) padded with -100 where the Trainer
# concatenated batches of different lengths, and labels padded with -100.
GENERATED = np.array(
    [
        [CLS, YES, SEP, PAD, -100],
        [CLS, MILD, DR, SEP, PAD],
        [CLS, MODERATE, DR, SEP, -100],
    ]
)
LABELS = np.array(
    [
        [YES, SEP, -100, -100],
        [MILD, DR, SEP, -100],
        [MILD, DR, SEP, -100],
    ]
)
DECODED_PREDICTIONS = ["yes", "mild dr", "moderate dr"]
DECODED_REFERENCES = ["yes", "mild dr", "mild dr"]


def test_build_compute_metrics_decodes_and_reads_dataset_columns(tokenizer) -> None:
    eval_dataset = datasets.Dataset.from_dict(
        {
            "question": ["any lesion?", "what grade?", "what grade?"],
            "answer": DECODED_REFERENCES,
            "question_type": ["presence", "diagnosis", "diagnosis"],
            "answer_type": ["closed", "closed", "closed"],
        }
    )
    compute_metrics = build_compute_metrics(tokenizer, eval_dataset)
    metrics = compute_metrics(EvalPrediction(predictions=GENERATED, label_ids=LABELS))
    assert metrics == compute_vqa_metrics(
        DECODED_PREDICTIONS,
        DECODED_REFERENCES,
        question_types=["presence", "diagnosis", "diagnosis"],
        answer_types=["closed", "closed", "closed"],
    )
    assert metrics["exact_match"] == pytest.approx(2 / 3)
    assert metrics["diagnosis_confusion/mild dr->moderate dr"] == 1


def test_build_compute_metrics_scores_against_raw_answers_not_label_ids(tokenizer) -> None:
    """References a WordPiece round trip would change (case, accents, unknown characters, punctuation
    spacing, truncation) are scored as written: the labels are never decoded."""
    raw = ["Moderate NPDR (R2) – refer", "Yes", "mild dr, re-examine in 12 months"]
    # Through this tokenizer those answers come back as "[UNK] [UNK] ..." / "yes" / "mild dr ...": decoding the
    # labels could never match the raw strings, so only raw references explain the scores below.
    generated = np.array([[CLS, YES, SEP, PAD], [CLS, YES, SEP, PAD], [CLS, MILD, DR, SEP]])
    labels = np.array([[1, 1, 1, SEP], [YES, SEP, -100, -100], [MILD, DR, SEP, -100]])
    eval_dataset = datasets.Dataset.from_dict({"answer": raw})
    metrics = build_compute_metrics(tokenizer, eval_dataset)(EvalPrediction(predictions=generated, label_ids=labels))
    assert metrics == compute_vqa_metrics(["yes", "yes", "mild dr"], raw)
    assert metrics["exact_match"] == pytest.approx(1 / 3)  # "Yes" matches "yes" after normalisation
    assert metrics["token_f1"] == pytest.approx((0 + 1 + 2 * (2 / 2) * (2 / 7) / (1 + 2 / 7)) / 3)
    decoded = tokenizer.batch_decode(labels.clip(min=0).tolist(), skip_special_tokens=True)
    assert decoded[0] != raw[0]  # the round trip the metrics no longer take


def test_build_compute_metrics_needs_the_answer_column(tokenizer) -> None:
    with pytest.raises(ValueError, match="answer_column"):
        build_compute_metrics(tokenizer, datasets.Dataset.from_dict({"question": ["q"]}))


def test_build_compute_metrics_accepts_tuple_predictions(tokenizer) -> None:
    compute_metrics = build_compute_metrics(tokenizer, datasets.Dataset.from_dict({"answer": DECODED_REFERENCES}))
    extra = np.zeros((3, 2), dtype=np.float32)
    metrics = compute_metrics(EvalPrediction(predictions=(GENERATED, extra), label_ids=LABELS))
    assert metrics == compute_vqa_metrics(DECODED_PREDICTIONS, DECODED_REFERENCES)


def test_build_compute_metrics_rejects_mismatched_dataset_and_logits(tokenizer) -> None:
    eval_dataset = datasets.Dataset.from_dict({"answer": ["yes"], "question_type": ["presence"]})
    with pytest.raises(ValueError, match="rows"):
        build_compute_metrics(tokenizer, eval_dataset)(EvalPrediction(predictions=GENERATED, label_ids=LABELS))
    logits = np.zeros((3, 5, len(VOCAB)), dtype=np.float32)
    three = datasets.Dataset.from_dict({"answer": DECODED_REFERENCES})
    with pytest.raises(ValueError, match="predict_with_generate"):
        build_compute_metrics(tokenizer, three)(EvalPrediction(predictions=logits, label_ids=LABELS))


def test_no_warnings_from_metrics() -> None:
    # The pure-Python BLEU must not emit nltk-style zero-count warnings into training logs.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_vqa_metrics(PREDICTIONS, REFERENCES, QUESTION_TYPES, ANSWER_TYPES)
