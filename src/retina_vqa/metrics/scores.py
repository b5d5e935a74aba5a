"""Scores of one prediction against one reference answer, corpus BLEU, and the diagnosis confusion matrix.

ROUGE-L and BLEU are implemented here in pure Python so that evaluation needs neither hub access
(``evaluate.load("rouge")`` downloads the metric script) nor extra dependencies. Both use the tokenizer of
``rouge_score`` (lowercase, every run of characters outside ``[a-z0-9]`` is a separator, no stemming).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from ..questions import DIAGNOSIS_ANSWERS
from .normalize import normalize_answer

# The diagnosis label set (the answers of the "what is the diagnosis?" question, questions.py).
DEFAULT_DIAGNOSIS_LABELS: tuple[str, ...] = tuple(DIAGNOSIS_ANSWERS)
# Column of the confusion matrix that collects predictions outside the label set.
OTHER_LABEL = "other"

# ---------------------------------------------------------------------------------------------------------
# Per-example scores
# ---------------------------------------------------------------------------------------------------------


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _overlap(prediction_tokens: list[str], reference_tokens: list[str]) -> int:
    # Multiset intersection: a token repeated in the prediction only counts as often as in the reference.
    return sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())


def _f_measure(matches: int, predicted: int, reference: int) -> float:
    # Harmonic mean of precision (matches / predicted) and recall (matches / reference); 0.0 without a match.
    if matches == 0:
        return 0.0
    precision = matches / predicted
    recall = matches / reference
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between the normalised answers (multiset overlap of whitespace tokens).

    As in the SQuAD v2 script, if either side has no tokens the score is 1.0 when both are empty and 0.0
    otherwise.
    """
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    return _f_measure(_overlap(pred_tokens, ref_tokens), len(pred_tokens), len(ref_tokens))


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
    return _f_measure(_lcs_length(ref_tokens, pred_tokens), len(pred_tokens), len(ref_tokens))


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


def label_index(labels: Sequence[str]) -> dict[str, int]:
    """Normalised label -> its position in `labels` (answers are looked up after :func:`normalize_answer`); a
    ``ValueError`` when two labels normalise to the same answer."""
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
    index = label_index(labels)
    other = len(labels)
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for reference, prediction in zip(references, predictions, strict=True):
        row = index.get(normalize_answer(reference))
        if row is None:
            continue
        matrix[row][index.get(normalize_answer(prediction), other)] += 1
    return matrix


def macro_f1(matrix: list[list[int]]) -> float:
    # Mean per-label F1 over the labels that occur as reference or prediction (as scikit-learn does when it
    # infers the labels). The "other" column is never a reference class, so it only lowers precision.
    scores = []
    for k, row in enumerate(matrix):
        support = sum(row)
        predicted = sum(r[k] for r in matrix)
        if support == 0 and predicted == 0:
            continue
        scores.append(_f_measure(row[k], predicted, support))
    return sum(scores) / len(scores) if scores else 0.0
