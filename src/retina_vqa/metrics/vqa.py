"""All VQA metrics of a set of answers, as the Trainer logs them, and the Trainer's ``compute_metrics``.

* :func:`compute_vqa_metrics` aggregates the scores of `scores.py` into the flat ``dict`` of numbers that the
  Hugging Face ``Trainer`` logs (with an ``eval_`` prefix), by closed/open answer, question type and
  diagnosis (with the grading metrics of `grading.py`: kappa, screening sensitivity / specificity);
* ``evaluate_metric.RetinaVQAMetric`` is an ``evaluate.Metric`` wrapper around it;
* :func:`build_compute_metrics` is the ``compute_metrics`` callback of a ``Seq2SeqTrainer`` run with
  ``predict_with_generate=True``. It scores the generated answers against the dataset's **raw** answer
  strings, the same references that ``predictions.jsonl`` and the question-prior baseline use: answers
  decoded back from the label ids would have gone through the tokenizer (accents stripped, unknown
  characters dropped, punctuation re-spaced, truncated to ``--max_answer_length``).

The official VQA accuracy ``min(#matching annotators / 3, 1)`` is deliberately not reported: the retinal
datasets have a single reference answer per question, so it could only ever be 0 or 1/3.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import scores
from .findings import multidisease_metrics
from .gradability import gradability_metrics, gradable_rows
from .grading import grading_metrics
from .normalize import normalize_answer

if TYPE_CHECKING:
    import datasets
    from transformers import EvalPrediction, PreTrainedTokenizerBase, ProcessorMixin

logger = logging.getLogger(__name__)

_CLOSED_MAX_TOKENS = 3


def _answer_kind(answer_type: str) -> str:
    kind = str(answer_type).strip().lower()
    if kind not in ("closed", "open"):
        raise ValueError(f"Unknown answer type {answer_type!r}; expected 'closed' or 'open'.")
    return kind


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _mean_score(score: Callable[[str, str], float], predictions: Sequence[str], references: Sequence[str]) -> float:
    return _mean([score(p, r) for p, r in zip(predictions, references, strict=True)])


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
    image_keys: Sequence[Hashable] | None = None,
) -> dict[str, float | int]:
    """Compute all VQA metrics as one flat ``dict`` of numbers.

    Args:
        predictions: Generated answers.
        references: Reference answers, one per prediction.
        question_types: Optional question type per example (e.g. "diagnosis", "presence").
        answer_types: Optional "closed" / "open" per example (case-insensitive). When omitted, an example is
            taken as closed if its normalised reference has at most 3 tokens ("yes", "mild dr",
            "healthy retina") and as open otherwise.
        diagnosis_labels: Label set of the diagnosis questions, defaults to `scores.DEFAULT_DIAGNOSIS_LABELS`.
        diagnosis_type: The question type whose rows are the diagnosis questions.
        image_keys: Optional image key per example (rows of one image share it). With question types and a quality
            question, the grading questions of the images whose reference quality answer is "no" are left out of
            ``exact_match/<grading type>`` and every ``diagnosis_*`` number (`gradability.py`).

    Returns:
        ``num_examples`` (int); ``exact_match``, ``token_f1``, ``rouge_l`` (means over examples) and ``bleu``
        (corpus BLEU-4) over all examples; ``closed_accuracy`` (exact match over closed rows) when there are
        closed rows; ``open_token_recall``, ``open_rouge_l`` and ``open_bleu`` when there are open rows;
        ``exact_match/<question_type>`` per question type; and, when ``diagnosis_type`` occurs among the
        question types, ``diagnosis_accuracy``, ``diagnosis_macro_f1`` (see `scores.macro_f1`) and the ints
        ``diagnosis_confusion/<reference>-><prediction>`` for every label pair plus ``-><other>`` (see
        `scores.confusion_matrix`), with the grading metrics of `grading.grading_metrics` (``diagnosis_qwk``,
        ``diagnosis_referable_sensitivity`` / ``_specificity`` and ``diagnosis_any_dr_...`` with 95% intervals,
        ``diagnosis_non_grade_answers``; the labels are the grades, lowest first); and for the multi-disease
        question types, `findings.multidisease_metrics`: ``report_*`` (findings reports scored by their findings,
        impression and recommendation, with ROUGE-L / BLEU), ``<type>_set_*`` (set answers, order-free) and
        ``cup_to_disc_*`` (absolute error). Keys of empty groups and undefined values are left out rather than
        reported as 0.
    """
    n = len(predictions)
    _check_length("references", references, n)
    _check_length("question types", question_types, n)
    _check_length("answer types", answer_types, n)
    _check_length("image keys", image_keys, n)
    predictions = ["" if p is None else str(p) for p in predictions]
    references = ["" if r is None else str(r) for r in references]

    em = [scores.exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
    metrics: dict[str, float | int] = {
        "num_examples": n,
        "exact_match": _mean(em),
        "token_f1": _mean_score(scores.token_f1, predictions, references),
        "rouge_l": _mean_score(scores.rouge_l, predictions, references),
        "bleu": scores.corpus_bleu(predictions, references),
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
        metrics["open_token_recall"] = _mean_score(scores.token_recall, open_preds, open_refs)
        metrics["open_rouge_l"] = _mean_score(scores.rouge_l, open_preds, open_refs)
        metrics["open_bleu"] = scores.corpus_bleu(open_preds, open_refs)

    if question_types is not None:
        question_types = [str(t) for t in question_types]
        by_type = _rows_by_type(question_types, references, image_keys)
        if image_keys is not None:
            metrics.update(gradability_metrics(image_keys, question_types, references, predictions))
        for question_type, rows in by_type.items():
            metrics[f"exact_match/{question_type}"] = _mean([em[i] for i in rows])

        diagnosis_rows = by_type.get(diagnosis_type, [])
        if diagnosis_rows:
            labels = tuple(scores.DEFAULT_DIAGNOSIS_LABELS if diagnosis_labels is None else diagnosis_labels)
            refs = [references[i] for i in diagnosis_rows]
            preds = [predictions[i] for i in diagnosis_rows]
            matrix = scores.confusion_matrix(refs, preds, labels)
            unlabelled = len(refs) - sum(map(sum, matrix))
            if unlabelled:
                logger.warning(
                    "%d %s references are not among the diagnosis labels %s and are left out of the "
                    "confusion counts, macro F1 and grading metrics.",
                    unlabelled,
                    diagnosis_type,
                    labels,
                )
            metrics["diagnosis_accuracy"] = _mean([em[i] for i in diagnosis_rows])
            metrics["diagnosis_macro_f1"] = scores.macro_f1(matrix)
            for ref_label, row in zip(labels, matrix, strict=True):
                for pred_label, count in zip((*labels, scores.OTHER_LABEL), row, strict=True):
                    metrics[f"diagnosis_confusion/{ref_label}->{pred_label}"] = int(count)
            metrics.update(grading_metrics(refs, preds, labels))
        # Multi-disease rows: findings reports scored by their findings, set answers as sets, the cup-to-disc
        # ratio by absolute error (`findings.py`); nothing for datasets without those question types.
        metrics.update(multidisease_metrics(predictions, references, question_types))
    return metrics


def _rows_by_type(
    question_types: Sequence[str], references: Sequence[str], image_keys: Sequence[Hashable] | None
) -> dict[str, list[int]]:
    """The scored rows of each question type: all of them, except the grading questions of ungradable images
    (`gradability.gradable_rows`) when image keys are given; a type left without rows is dropped."""
    keep = None if image_keys is None else gradable_rows(image_keys, question_types, references)
    by_type: dict[str, list[int]] = {}
    for i, question_type in enumerate(question_types):
        if keep is None or keep[i]:
            by_type.setdefault(question_type, []).append(i)
    return by_type


# ---------------------------------------------------------------------------------------------------------
# Trainer callback
# ---------------------------------------------------------------------------------------------------------


def decode_ids(tokenizer: Any, ids: Any, pad_token_id: int | None = None) -> list[str]:
    """Generated ids -> stripped answer strings; the Trainer's -100 padding becomes the pad id (default: the
    tokenizer's) first."""
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id
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
    # WordPiece decoding spaces out a decimal point ("0.7" -> "0. 7"), which normalisation would then read as two
    # numbers; put decimals back together.
    return [_DECODED_DECIMAL.sub(r"\1.\2", text.strip()) for text in texts]


_DECODED_DECIMAL = re.compile(r"(\d)\. (\d)")


def _dataset_column(eval_dataset: Any, column: str, expected: int) -> list[str] | None:
    column_names = getattr(eval_dataset, "column_names", None)
    if eval_dataset is None or column_names is None or column not in column_names:
        return None
    values = [str(v) for v in eval_dataset.select_columns([column])[column]]
    if len(values) != expected:
        raise ValueError(
            f"eval_dataset has {len(values)} rows but the trainer returned {expected} predictions; pass the "
            "dataset that was evaluated."
        )
    return values


def build_compute_metrics(
    tokenizer: PreTrainedTokenizerBase | ProcessorMixin,
    eval_dataset: datasets.Dataset,
    answer_column: str = "answer",
    question_type_column: str = "question_type",
    answer_type_column: str = "answer_type",
    diagnosis_labels: Sequence[str] | None = None,
    diagnosis_type: str = "diagnosis",
    image_key_column: str = "image_key",
) -> Callable[[EvalPrediction], dict[str, float | int]]:
    """Build the ``compute_metrics`` callback of a ``Seq2SeqTrainer`` with ``predict_with_generate=True``.

    The callback decodes the generated ids (``eval_pred.predictions``, or its first element when it is a
    tuple), replacing -100 by the pad token id first, and scores them with :func:`compute_vqa_metrics`
    against the raw strings of ``eval_dataset[answer_column]`` (never the label ids: see the module
    docstring). Question and answer types, and the image keys that tell which rows are about one image (for the
    ungradable images: `gradability.py`), are read from ``eval_dataset`` columns when present. The Trainer
    keeps dataset order (``gather_for_metrics`` in a distributed run), so row i of the dataset is prediction i.

    Args:
        tokenizer: The tokenizer, or a processor (such as ``BlipProcessor``) that wraps one.
        eval_dataset: The evaluated dataset, in the order the Trainer evaluates it.
        answer_column: Column holding the reference answers.
        question_type_column: Column holding the question type.
        answer_type_column: Column holding "closed" / "open".
        diagnosis_labels: Forwarded to :func:`compute_vqa_metrics`.
        diagnosis_type: Forwarded to :func:`compute_vqa_metrics`.
        image_key_column: Column holding each row's image key (``data.prepare_split`` adds ``image_key``).
    """
    inner_tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    pad_token_id = getattr(inner_tokenizer, "pad_token_id", None)
    if pad_token_id is None:
        raise ValueError("The tokenizer has no pad token id; it is needed to replace the -100 label padding.")
    if answer_column not in getattr(eval_dataset, "column_names", ()):
        raise ValueError(
            f"The evaluated dataset has no reference answer column {answer_column!r} (columns: "
            f"{getattr(eval_dataset, 'column_names', None)}); metrics are scored against it (--answer_column)."
        )

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float | int]:
        predictions = decode_ids(inner_tokenizer, eval_pred.predictions, pad_token_id)
        return compute_vqa_metrics(
            predictions,
            _dataset_column(eval_dataset, answer_column, len(predictions)),
            question_types=_dataset_column(eval_dataset, question_type_column, len(predictions)),
            answer_types=_dataset_column(eval_dataset, answer_type_column, len(predictions)),
            diagnosis_labels=diagnosis_labels,
            diagnosis_type=diagnosis_type,
            image_keys=_dataset_column(eval_dataset, image_key_column, len(predictions)),
        )

    return compute_metrics
