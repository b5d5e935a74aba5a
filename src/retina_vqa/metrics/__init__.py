"""Metrics of retinal VQA: answer normalisation, per-answer scores, the aggregate the Trainer logs, and the
question-prior baseline scored the same way.

``normalize.py`` (when two answers are the same), ``scores.py`` (one prediction against one reference, BLEU,
diagnosis confusion), ``grading.py`` (DR grading: quadratic weighted kappa, referable / any-DR sensitivity and
specificity with Wilson intervals), ``vqa.py`` (all metrics of a set, ``compute_metrics`` for the Trainer),
``findings.py`` (multi-disease answers: findings reports scored by their findings, set answers, the
cup-to-disc ratio), ``prior.py`` (the image-blind baseline), ``evaluate_metric.py`` (``RetinaVQAMetric``, the
``evaluate.Metric``; imported on first use, since ``evaluate`` pulls in torch).
``screening.py`` (grade-wise AUROC, referable-DR operating points fitted on validation rows, the ROC curve).
``gradability.py`` (images whose quality answer is "no": left out of the grading metrics, counted, their rates).
"""

from .findings import PRIOR_REPORTED_KEYS, extract_findings, multidisease_metrics, report_metrics
from .grading import GRADING_KEYS, grading_metrics, quadratic_weighted_kappa, wilson_interval
from .normalize import normalize_answer
from .prior import QuestionPriorBaseline, score_prior
from .scores import (
    DEFAULT_DIAGNOSIS_LABELS,
    OTHER_LABEL,
    confusion_matrix,
    corpus_bleu,
    exact_match,
    macro_f1,
    rouge_l,
    rouge_tokenize,
    token_f1,
    token_recall,
)
from .vqa import build_compute_metrics, compute_vqa_metrics, decode_ids

__all__ = [
    "DEFAULT_DIAGNOSIS_LABELS",
    "GRADING_KEYS",
    "OTHER_LABEL",
    "PRIOR_REPORTED_KEYS",
    "QuestionPriorBaseline",
    "RetinaVQAMetric",
    "build_compute_metrics",
    "compute_vqa_metrics",
    "confusion_matrix",
    "corpus_bleu",
    "decode_ids",
    "exact_match",
    "extract_findings",
    "grading_metrics",
    "macro_f1",
    "multidisease_metrics",
    "normalize_answer",
    "quadratic_weighted_kappa",
    "report_metrics",
    "rouge_l",
    "rouge_tokenize",
    "score_prior",
    "token_f1",
    "token_recall",
    "wilson_interval",
]


def __getattr__(name: str):
    if name == "RetinaVQAMetric":
        from .evaluate_metric import RetinaVQAMetric

        return RetinaVQAMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
