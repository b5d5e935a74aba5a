"""How an evaluation ranks: the lists tokenised once (`RankingPlan`), each evaluated row's list carried through the
batches (`WithAnswerSets`, the ``answer_set`` column), and the calibration numbers of the ranked rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..metrics.calibration import RankedAnswerMetrics
from ..models.blip2 import PromptLayout
from ..models.ranking import (
    DEFAULT_TOP_K,
    BlipPrefix,
    DecoderOnlyPrefix,
    EncoderDecoderPrefix,
    TokenizedCandidates,
    score_candidates,
    tokenize_candidates,
)
from .candidates import ANSWER_SET_COLUMN, AnswerCandidates


@dataclass
class WithAnswerSets:
    """A collator whose evaluation batches also carry each row's candidate list index (``answer_set``, -1 for
    generated rows), read from the dataset column of that name; everything else is the wrapped collator's."""

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        if ANSWER_SET_COLUMN in features[0]:
            batch[ANSWER_SET_COLUMN] = torch.tensor([int(f[ANSWER_SET_COLUMN]) for f in features], dtype=torch.long)
        return batch

    def __getattr__(self, name: str) -> Any:  # share_images, return_image_keys, ...: the wrapped collator's
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


@dataclass
class RankingPlan:
    """The candidate lists an evaluation ranks against, tokenised once: row ``i`` of an evaluated set names its
    list by index (``-1``: generated). ``width`` is the longest list: the candidate scores of every row are
    returned padded to it, so that batches and processes gather like logits."""

    names: list[str]
    sets: list[TokenizedCandidates]
    top_k: int | None = DEFAULT_TOP_K

    @classmethod
    def build(
        cls,
        candidates: AnswerCandidates,
        processor: Any,
        layout: PromptLayout | None = None,
        max_target_tokens: int | None = None,
        top_k: int | None = DEFAULT_TOP_K,
    ) -> RankingPlan:
        names = list(candidates.answers)
        sets = [tokenize_candidates(candidates.answers[n], processor, layout, max_target_tokens) for n in names]
        return cls(names, sets, top_k)

    @property
    def width(self) -> int:
        return max((len(s) for s in self.sets), default=0)

    def row_sets(
        self,
        candidates: AnswerCandidates,
        questions: Sequence[str],
        question_types: Sequence[str | None] | None,
        mode: str,
    ) -> list[int]:
        """The list index of each row (``-1``: generated) under `mode`: `AnswerCandidates.assign`, as indices into
        this plan's lists (the form a dataset column and a batch tensor carry)."""
        position = {name: i for i, name in enumerate(self.names)}
        return [-1 if name is None else position[name] for name in candidates.assign(questions, question_types, mode)]

    def metrics(
        self,
        compute_metrics: Callable[[Any], dict[str, float | int]] | None,
        dataset: Any,
        answer_column: str = "answer",
        question_type_column: str = "question_type",
        temperatures: Mapping[str, float] | None = None,
        image_key_column: str = "image_key",
    ) -> RankedAnswerMetrics:
        """`compute_metrics` with the calibration numbers of the ranked rows of `dataset` (evaluation order), which
        holds the ``answer_set`` column (and the image keys that mark the grading rows of ungradable images)."""
        names = dataset.column_names
        wanted = (ANSWER_SET_COLUMN, answer_column, question_type_column, image_key_column)
        columns = [c for c in wanted if c in names]
        data = dataset.select_columns(columns).to_dict()
        return RankedAnswerMetrics(
            compute_metrics,
            self.names,
            [s.answers for s in self.sets],
            data.get(ANSWER_SET_COLUMN, [-1] * len(dataset)),
            references=data.get(answer_column),
            question_types=data.get(question_type_column),
            temperatures=temperatures,
            image_keys=data.get(image_key_column),
        )

    def rank(
        self, prefix: BlipPrefix | EncoderDecoderPrefix | DecoderOnlyPrefix, row_sets: Sequence[int]
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Rank the questions of `prefix` (question i against list ``row_sets[i]``): the chosen candidates as
        generated ids, and the candidate scores padded with NaN to `width` (fp32, CPU)."""
        sets = [self.sets[s] for s in row_sets]
        scores = score_candidates(prefix, sets, self.top_k)
        padded = torch.full((len(sets), self.width), float("nan"))
        chosen = []
        for i, (candidate_set, values) in enumerate(zip(sets, scores, strict=True)):
            padded[i, : len(values)] = values
            chosen.append(candidate_set.output_ids(int(values.argmax())))
        return chosen, padded
