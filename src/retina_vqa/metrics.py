"""Answer normalisation and evaluation metrics for retinal VQA.

This module owns everything that turns (prediction, reference) answer strings into numbers:

* :func:`normalize_answer`, the answer normalisation of the official VQA evaluation script
  (``vqaEval.py``: ``processPunctuation`` followed by ``processDigitArticle``);
* per-example scores: :func:`exact_match`, :func:`token_f1`, :func:`token_recall`, :func:`rouge_l`;
* the corpus score :func:`corpus_bleu` (BLEU-4);
* :func:`confusion_matrix` for the diagnosis questions;
* :func:`compute_vqa_metrics`, which aggregates all of the above into the flat ``dict`` of numbers that the
  Hugging Face ``Trainer`` logs (with an ``eval_`` prefix);
* :class:`RetinaVQAMetric`, an ``evaluate.Metric`` wrapper around :func:`compute_vqa_metrics`;
* :func:`build_compute_metrics`, the ``compute_metrics`` callback for a ``Seq2SeqTrainer`` run with
  ``predict_with_generate=True``.

ROUGE-L and BLEU are implemented here in pure Python so that evaluation needs neither hub access
(``evaluate.load("rouge")`` downloads the metric script) nor extra dependencies. Both use the tokenizer of
``rouge_score`` (lowercase, every run of characters outside ``[a-z0-9]`` is a separator, no stemming).

The official VQA accuracy ``min(#matching annotators / 3, 1)`` is deliberately not reported: the retinal
datasets have a single reference answer per question, so it could only ever be 0 or 1/3.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import datasets
import evaluate
import numpy as np

if TYPE_CHECKING:
    from transformers import EvalPrediction, PreTrainedTokenizerBase, ProcessorMixin

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DIAGNOSIS_LABELS",
    "OTHER_LABEL",
    "RetinaVQAMetric",
    "build_compute_metrics",
    "compute_vqa_metrics",
    "confusion_matrix",
    "corpus_bleu",
    "exact_match",
    "normalize_answer",
    "rouge_l",
    "rouge_tokenize",
    "token_f1",
    "token_recall",
]

DEFAULT_DIAGNOSIS_LABELS: tuple[str, ...] = (
    "healthy retina",
    "mild dr",
    "moderate dr",
    "severe dr",
    "proliferative dr",
)
# Column of the confusion matrix that collects predictions outside the label set.
OTHER_LABEL = "other"

# ---------------------------------------------------------------------------------------------------------
# VQA answer normalisation (tables copied from the official vqaEval.py)
# ---------------------------------------------------------------------------------------------------------

# The official table, kept verbatim (including its oddities, such as "somebody'd" -> "somebodyd"). The
# capitalised keys ("Im", "Ive", ...) can never match because the text is lowercased first; they are kept
# so that the behaviour stays identical to the reference script.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# Characters the official script removes or turns into spaces. Note that ":", "'", "*", "#", "%", "&", "$",
# "|", "~" and "^" are not in the official list and therefore survive normalisation.
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a (mistyped) lookahead that always
# succeeds, so the effective rule is "drop every period that is not followed by a digit". That is what is
# written here: "2.5" keeps its period, "dogs." loses it.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    """``processPunctuation`` from vqaEval.py.

    A punctuation mark that touches a space (``"yes, it is"``) is deleted, one inside a word (``"yes/no"``)
    becomes a space. If the text contains a comma between digits (``"1,000"``), every punctuation mark is
    deleted instead, which is how the official script turns ``"1,000"`` into ``"1000"``.
    """
    out = text
    has_number_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCTUATION:
        # The test is on the original text, not on the partially processed one, as in the official script.
        if mark + " " in text or " " + mark in text or has_number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # Deviation: the official script passes re.UNICODE as the ``count`` argument of ``sub`` and so strips at
    # most 32 periods; answers that long do not occur, and stripping all of them is what was intended.
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    """``processDigitArticle`` from vqaEval.py: lowercase, number words to digits, drop articles, expand
    contractions written without an apostrophe. Splitting and re-joining also collapses whitespace."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Normalise an answer the way the official VQA evaluation script does.

    Steps (``vqaEval.py``): newlines and tabs become spaces, surrounding whitespace is stripped, then
    ``processPunctuation`` (see :func:`_process_punctuation`) and ``processDigitArticle`` (lowercase, number
    words "none"/"zero".."ten" to digits, articles a/an/the removed, contractions such as "dont" ->
    "don't" restored, whitespace collapsed).

    Deviations from the official script: the period rule is applied to every period (the official call
    strips at most 32), and the normalisation is applied to every answer, whereas the official script skips
    it when all ten annotators agree (irrelevant with a single reference answer).

    Examples:
        >>> normalize_answer("Two dogs.")
        '2 dogs'
        >>> normalize_answer("isnt")
        "isn't"
        >>> normalize_answer("3.5 mm")
        '3.5 mm'
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


# ---------------------------------------------------------------------------------------------------------
# Per-example scores
# ---------------------------------------------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _overlap(prediction_tokens: list[str], reference_tokens: list[str]) -> int:
    # Multiset intersection: a token repeated in the prediction only counts as often as in the reference.
    return sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between the normalised answers (multiset overlap of whitespace tokens).

    As in the SQuAD v2 script, if either side has no tokens the score is 1.0 when both are empty and 0.0
    otherwise.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = _overlap(pred_tokens, ref_tokens)
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str, reference: str) -> float:
    """Share of the normalised reference tokens found in the normalised prediction (multiset).

    Useful for open answers, where a correct but more verbose prediction should not be penalised. An empty
    reference scores 1.0 against an empty prediction and 0.0 otherwise.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not ref_tokens:
        return float(not pred_tokens)
    return _overlap(pred_tokens, ref_tokens) / len(ref_tokens)


_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """The default tokenizer of ``rouge_score`` (without stemming): lowercase, split on anything that is
    not ``[a-z0-9]``. Used for both ROUGE-L and BLEU."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    # Classic dynamic programme keeping one row; answers are short so O(len(a) * len(b)) is fine.
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of one prediction against one reference, as ``rouge_score`` computes it.

    ``lcs / len(prediction)`` is the precision, ``lcs / len(reference)`` the recall and the result their
    harmonic mean; 0.0 when either side has no tokens (``rouge_score`` behaves the same way).
    """
    pred_tokens = rouge_tokenize(prediction)
    ref_tokens = rouge_tokenize(reference)
    if not pred_tokens or not ref_tokens:
        return 0.0
    lcs = _lcs_length(ref_tokens, pred_tokens)
    if lcs == 0:
        return 0.0
    precision = lcs / len(pred_tokens)
    recall = lcs / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------------------
# Corpus BLEU
# ---------------------------------------------------------------------------------------------------------


def _ngram_counts(tokens: list[str], order: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + order]) for i in range(len(tokens) - order + 1))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus-level BLEU (Papineni et al., 2002) with one reference per prediction.

    Uniform weights over the n-gram orders 1..``max_order``, clipped n-gram precisions pooled over the
    corpus, brevity penalty ``exp(1 - r / c)`` when the total prediction length ``c`` is not longer than the
    total reference length ``r``, no smoothing. Tokens come from :func:`rouge_tokenize`. The score is 0.0
    when any n-gram precision is 0, as in ``nltk.translate.bleu_score.corpus_bleu`` (which returns a value
    below 1e-70 there) and the Hugging Face "bleu" metric.

    The number of possible n-grams of a prediction shorter than n is 0, as in the Hugging Face "bleu"
    metric; ``nltk`` counts it as 1. Both give the same score whenever every prediction has at least
    ``max_order`` tokens; with shorter predictions this implementation follows the Hugging Face metric.

    Returns a value in [0, 1]; 0.0 for an empty corpus.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if max_order < 1:
        raise ValueError(f"max_order must be at least 1, got {max_order}.")
    matches = [0] * max_order
    possible = [0] * max_order
    prediction_length = 0
    reference_length = 0
    for prediction, reference in zip(predictions, references, strict=True):
        pred_tokens = rouge_tokenize(prediction)
        ref_tokens = rouge_tokenize(reference)
        prediction_length += len(pred_tokens)
        reference_length += len(ref_tokens)
        for order in range(1, max_order + 1):
            pred_ngrams = _ngram_counts(pred_tokens, order)
            matches[order - 1] += sum((pred_ngrams & _ngram_counts(ref_tokens, order)).values())
            possible[order - 1] += max(0, len(pred_tokens) - order + 1)
    if prediction_length == 0 or any(m == 0 for m in matches):
        return 0.0
    log_precision = math.fsum(math.log(m / p) for m, p in zip(matches, possible, strict=True)) / max_order
    if prediction_length > reference_length:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1 - reference_length / prediction_length)
    return brevity_penalty * math.exp(log_precision)


# ---------------------------------------------------------------------------------------------------------
# Diagnosis confusion matrix
# ---------------------------------------------------------------------------------------------------------


def _label_index(labels: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for position, label in enumerate(labels):
        key = normalize_answer(label)
        if key in index:
            raise ValueError(f"Diagnosis labels {labels[index[key]]!r} and {label!r} normalise to the same answer.")
        index[key] = position
    return index


def confusion_matrix(
    references: Sequence[str], predictions: Sequence[str], labels: Sequence[str] = DEFAULT_DIAGNOSIS_LABELS
) -> list[list[int]]:
    """Count (reference, prediction) pairs over a fixed label set.

    Returns ``len(labels)`` rows (the reference label, in ``labels`` order) of ``len(labels) + 1`` columns
    (the predicted label, in ``labels`` order, then :data:`OTHER_LABEL` for any prediction outside the label
    set). Answers and labels are compared after :func:`normalize_answer`, so "Mild DR." matches "mild dr".
    Pairs whose reference is not one of the labels are not counted.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    index = _label_index(labels)
    other = len(labels)
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for reference, prediction in zip(references, predictions, strict=True):
        row = index.get(normalize_answer(reference))
        if row is None:
            continue
        matrix[row][index.get(normalize_answer(prediction), other)] += 1
    return matrix


def _macro_f1(matrix: list[list[int]]) -> float:
    # Mean per-label F1 over the labels that occur as reference or prediction (as scikit-learn does when it
    # infers the labels). The "other" column is never a reference class, so it only lowers precision.
    scores = []
    for k, row in enumerate(matrix):
        support = sum(row)
        predicted = sum(r[k] for r in matrix)
        if support == 0 and predicted == 0:
            continue
        true_positives = row[k]
        if true_positives == 0:
            scores.append(0.0)
            continue
        precision = true_positives / predicted
        recall = true_positives / support
        scores.append(2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores) if scores else 0.0


# ---------------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------------

_CLOSED_MAX_TOKENS = 3


def _answer_kind(answer_type: str) -> str:
    kind = str(answer_type).strip().lower()
    if kind not in ("closed", "open"):
        raise ValueError(f"Unknown answer type {answer_type!r}; expected 'closed' or 'open'.")
    return kind


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _check_length(name: str, values: Sequence[Any] | None, expected: int) -> None:
    if values is not None and len(values) != expected:
        raise ValueError(f"Got {expected} predictions but {len(values)} {name}.")


def compute_vqa_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
    diagnosis_labels: Sequence[str] | None = None,
    diagnosis_type: str = "diagnosis",
) -> dict[str, float | int]:
    """Compute all VQA metrics as one flat ``dict`` of numbers.

    Args:
        predictions: Generated answers.
        references: Reference answers, one per prediction.
        question_types: Optional question type per example (e.g. "diagnosis", "presence").
        answer_types: Optional "closed" / "open" per example (case-insensitive). When omitted, an example is
            taken as closed if its normalised reference has at most 3 tokens ("yes", "mild dr",
            "healthy retina") and as open otherwise.
        diagnosis_labels: Label set of the diagnosis questions, defaults to :data:`DEFAULT_DIAGNOSIS_LABELS`.
        diagnosis_type: The question type whose rows are the diagnosis questions.

    Returns:
        ``num_examples`` (int); ``exact_match``, ``token_f1``, ``rouge_l`` (means over examples) and ``bleu``
        (corpus BLEU-4) over all examples; ``closed_accuracy`` (exact match over closed rows) when there are
        closed rows; ``open_token_recall``, ``open_rouge_l`` and ``open_bleu`` when there are open rows;
        ``exact_match/<question_type>`` per question type; and, when ``diagnosis_type`` occurs among the
        question types, ``diagnosis_accuracy``, ``diagnosis_macro_f1`` (see :func:`_macro_f1`) and the ints
        ``diagnosis_confusion/<reference>-><prediction>`` for every label pair plus ``-><other>`` (see
        :func:`confusion_matrix`). Keys of empty groups are left out rather than reported as 0.
    """
    n = len(predictions)
    _check_length("references", references, n)
    _check_length("question types", question_types, n)
    _check_length("answer types", answer_types, n)
    predictions = ["" if p is None else str(p) for p in predictions]
    references = ["" if r is None else str(r) for r in references]

    em = [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    metrics: dict[str, float | int] = {
        "num_examples": n,
        "exact_match": _mean(em),
        "token_f1": _mean([token_f1(p, r) for p, r in zip(predictions, references, strict=True)]),
        "rouge_l": _mean([rouge_l(p, r) for p, r in zip(predictions, references, strict=True)]),
        "bleu": corpus_bleu(predictions, references),
    }

    if answer_types is not None:
        kinds = [_answer_kind(t) for t in answer_types]
    else:
        kinds = ["closed" if len(normalize_answer(r).split()) <= _CLOSED_MAX_TOKENS else "open" for r in references]
    closed = [i for i, kind in enumerate(kinds) if kind == "closed"]
    opened = [i for i, kind in enumerate(kinds) if kind == "open"]
    if closed:
        metrics["closed_accuracy"] = _mean([em[i] for i in closed])
    if opened:
        open_preds = [predictions[i] for i in opened]
        open_refs = [references[i] for i in opened]
        metrics["open_token_recall"] = _mean([token_recall(p, r) for p, r in zip(open_preds, open_refs, strict=True)])
        metrics["open_rouge_l"] = _mean([rouge_l(p, r) for p, r in zip(open_preds, open_refs, strict=True)])
        metrics["open_bleu"] = corpus_bleu(open_preds, open_refs)

    if question_types is not None:
        by_type: dict[str, list[int]] = {}
        for i, question_type in enumerate(question_types):
            by_type.setdefault(str(question_type), []).append(i)
        for question_type, rows in by_type.items():
            metrics[f"exact_match/{question_type}"] = _mean([em[i] for i in rows])

        diagnosis_rows = by_type.get(diagnosis_type, [])
        if diagnosis_rows:
            labels = tuple(DEFAULT_DIAGNOSIS_LABELS if diagnosis_labels is None else diagnosis_labels)
            refs = [references[i] for i in diagnosis_rows]
            preds = [predictions[i] for i in diagnosis_rows]
            matrix = confusion_matrix(refs, preds, labels)
            unlabelled = len(refs) - sum(map(sum, matrix))
            if unlabelled:
                logger.warning(
                    "%d %s references are not among the diagnosis labels %s and are left out of the "
                    "confusion counts and macro F1.",
                    unlabelled,
                    diagnosis_type,
                    labels,
                )
            metrics["diagnosis_accuracy"] = _mean([em[i] for i in diagnosis_rows])
            metrics["diagnosis_macro_f1"] = _macro_f1(matrix)
            for ref_label, row in zip(labels, matrix, strict=True):
                for pred_label, count in zip((*labels, OTHER_LABEL), row, strict=True):
                    metrics[f"diagnosis_confusion/{ref_label}->{pred_label}"] = int(count)
    return metrics


# ---------------------------------------------------------------------------------------------------------
# evaluate.Metric wrapper
# ---------------------------------------------------------------------------------------------------------

_METRIC_DESCRIPTION = """Retinal VQA metrics: VQA-normalised exact match, token F1, ROUGE-L and corpus BLEU-4,
with closed/open, per-question-type and diagnosis breakdowns."""
_METRIC_INPUTS = """
Args:
    predictions (`list` of `str`): generated answers.
    references (`list` of `str`): reference answers, one per prediction.
    question_types (`list` of `str`, optional, passed to `compute`): question type per example.
    answer_types (`list` of `str`, optional, passed to `compute`): "closed" or "open" per example.
    diagnosis_labels (`list` of `str`, optional, passed to `compute`): diagnosis label set.
    diagnosis_type (`str`, optional, passed to `compute`): question type of the diagnosis questions.
Returns:
    A flat dict of numbers, see `retina_vqa.metrics.compute_vqa_metrics`.
"""


class RetinaVQAMetric(evaluate.Metric):
    """``evaluate.Metric`` front end of :func:`compute_vqa_metrics`.

    Predictions and references are accumulated with ``add``/``add_batch``; the per-example side information
    is passed to ``compute`` in the same order::

        metric = RetinaVQAMetric(keep_in_memory=True)
        metric.add_batch(predictions=preds, references=refs)
        metric.compute(question_types=qtypes, answer_types=atypes)

    Without ``keep_in_memory=True`` the inputs are buffered in an Arrow file under ``cache_dir`` (default:
    the ``evaluate`` metrics cache), which is removed again by ``compute``.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_METRIC_DESCRIPTION,
            citation="",
            inputs_description=_METRIC_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=[
                "https://github.com/GT-Vision-Lab/VQA/blob/master/PythonEvaluationTools/vqaEvaluation/vqaEval.py"
            ],
        )

    def _compute(
        self,
        predictions: Sequence[str],
        references: Sequence[str],
        question_types: Sequence[str] | None = None,
        answer_types: Sequence[str] | None = None,
        diagnosis_labels: Sequence[str] | None = None,
        diagnosis_type: str = "diagnosis",
    ) -> dict[str, float | int]:
        return compute_vqa_metrics(
            list(predictions),
            list(references),
            question_types=None if question_types is None else list(question_types),
            answer_types=None if answer_types is None else list(answer_types),
            diagnosis_labels=diagnosis_labels,
            diagnosis_type=diagnosis_type,
        )


# ---------------------------------------------------------------------------------------------------------
# Trainer callback
# ---------------------------------------------------------------------------------------------------------


def decode_ids(tokenizer: Any, ids: Any, pad_token_id: int) -> list[str]:
    """Generated (or label) ids -> stripped strings; the Trainer's -100 padding becomes the pad id first."""
    if isinstance(ids, tuple):
        # Some models return (sequences, extra outputs...); the generated ids are the first element.
        ids = ids[0]
    array = np.asarray(ids)
    if array.ndim != 2:
        raise ValueError(
            f"Expected generated token ids of shape (batch, length), got shape {array.shape}; "
            "is the trainer running with predict_with_generate=True?"
        )
    # The Trainer pads ragged batches with -100 when it concatenates them; -100 is not a valid token id.
    array = np.where(array == -100, pad_token_id, array).astype(np.int64)
    texts = tokenizer.batch_decode(array.tolist(), skip_special_tokens=True)
    return [text.strip() for text in texts]


def _dataset_column(eval_dataset: Any, column: str, expected: int) -> list[str] | None:
    column_names = getattr(eval_dataset, "column_names", None)
    if eval_dataset is None or column_names is None or column not in column_names:
        return None
    values = [str(v) for v in eval_dataset[column]]
    if len(values) != expected:
        raise ValueError(
            f"eval_dataset has {len(values)} rows but the trainer returned {expected} predictions; pass the "
            "dataset that was evaluated."
        )
    return values


def build_compute_metrics(
    tokenizer: PreTrainedTokenizerBase | ProcessorMixin,
    eval_dataset: datasets.Dataset | None = None,
    question_type_column: str = "question_type",
    answer_type_column: str = "answer_type",
    diagnosis_labels: Sequence[str] | None = None,
    diagnosis_type: str = "diagnosis",
) -> Callable[[EvalPrediction], dict[str, float | int]]:
    """Build the ``compute_metrics`` callback of a ``Seq2SeqTrainer`` with ``predict_with_generate=True``.

    The callback decodes the generated ids (``eval_pred.predictions``, or its first element when it is a
    tuple) and the labels (``eval_pred.label_ids``), replacing -100 by the pad token id first, and returns
    :func:`compute_vqa_metrics`. Question and answer types are read from ``eval_dataset`` columns when
    present; the Trainer keeps dataset order, so row i of the dataset is prediction i.

    Args:
        tokenizer: The tokenizer, or a processor (such as ``BlipProcessor``) that wraps one.
        eval_dataset: The evaluated dataset, used only for its type columns.
        question_type_column: Column holding the question type.
        answer_type_column: Column holding "closed" / "open".
        diagnosis_labels: Forwarded to :func:`compute_vqa_metrics`.
        diagnosis_type: Forwarded to :func:`compute_vqa_metrics`.
    """
    inner_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    pad_token_id = getattr(inner_tokenizer, "pad_token_id", None)
    if pad_token_id is None:
        raise ValueError("The tokenizer has no pad token id; it is needed to replace the -100 label padding.")

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float | int]:
        predictions = decode_ids(inner_tokenizer, eval_pred.predictions, pad_token_id)
        references = decode_ids(inner_tokenizer, eval_pred.label_ids, pad_token_id)
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} labels.")
        return compute_vqa_metrics(
            predictions,
            references,
            question_types=_dataset_column(eval_dataset, question_type_column, len(predictions)),
            answer_types=_dataset_column(eval_dataset, answer_type_column, len(predictions)),
            diagnosis_labels=diagnosis_labels,
            diagnosis_type=diagnosis_type,
        )

    return compute_metrics
