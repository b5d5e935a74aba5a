"""`RetinaVQAMetric`: the metrics of `vqa.compute_vqa_metrics` as an ``evaluate.Metric``.

Kept apart because ``evaluate`` imports torch through transformers: the rest of `retina_vqa.metrics` (and
`retina_vqa.plots`, which uses it) stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from .vqa import compute_vqa_metrics

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
        **options: Any,
    ) -> dict[str, float | int]:
        # `options`: diagnosis_labels, diagnosis_type, passed on as given.
        return compute_vqa_metrics(
            list(predictions),
            list(references),
            question_types=None if question_types is None else list(question_types),
            answer_types=None if answer_types is None else list(answer_types),
            **options,
        )
