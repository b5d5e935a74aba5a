"""The question-prior baseline: image-blind answers a fine-tuned model has to beat.

Answer every question with the most frequent training answer for its question type (or, without a
``question_type`` column, for its normalised question). `score_prior` scores it with exactly the metrics
and references of the model (`vqa.compute_vqa_metrics`), so the two sit side by side in
``all_results.json``, the model card and ``python -m retina_vqa.baselines``. It answers every diagnosis
question with one grade, so its quadratic weighted kappa is 0 and its screening sensitivity / specificity are
1 / 0 (that grade is positive for the task) or 0 / 1: the floor for the grading metrics of `grading.py`.

Scored, its answers are the training answers as written (the first spelling of the winning answer), not their
normalised keys: for a findings report that is the most common report with its punctuation, which the finding
extractor of `findings.py` needs to tell a negated finding from a present one.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .normalize import normalize_answer
from .vqa import compute_vqa_metrics

if TYPE_CHECKING:
    import datasets


class QuestionPriorBaseline:
    """Most frequent training answer per question type; overall most frequent answer otherwise.

    Answers are counted after `normalize_answer`, so "Severe DR " and "severe dr" are one answer.
    """

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.default_answer: str = ""
        self.keyed_by: str = "question_type"
        # The winning answers as first written in training ("Severe DR", a report with its full stops).
        self.written: dict[str, str] = {}
        self.default_written: str = ""

    def fit(
        self,
        questions: Sequence[str],
        answers: Sequence[str],
        question_types: Sequence[str] | None = None,
    ) -> QuestionPriorBaseline:
        if len(questions) != len(answers):
            raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
        if not answers:
            raise ValueError("cannot fit the question-prior baseline on an empty training split")
        self.keyed_by = "question_type" if question_types is not None else "question"
        keys = self._keys(questions, question_types)
        per_key: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        spellings: dict[str, str] = {}
        for key, answer in zip(keys, answers, strict=True):
            normalised = normalize_answer(str(answer))
            per_key[key][normalised] += 1
            spellings.setdefault(normalised, str(answer).strip())
        # Ties go to the answer seen first, so the baseline does not depend on hash order.
        self.answers = {key: counts.most_common(1)[0][0] for key, counts in per_key.items()}
        overall = collections.Counter(normalize_answer(str(a)) for a in answers)
        self.default_answer = overall.most_common(1)[0][0]
        self.written = {key: spellings[answer] for key, answer in self.answers.items()}
        self.default_written = spellings[self.default_answer]
        return self

    def _keys(self, questions: Sequence[str], question_types: Sequence[str] | None) -> list[str]:
        if question_types is not None:
            if len(question_types) != len(questions):
                raise ValueError(f"got {len(questions)} questions but {len(question_types)} question types")
            return [str(t) for t in question_types]
        return [normalize_answer(str(q)) for q in questions]

    def predict(
        self, questions: Sequence[str], question_types: Sequence[str] | None = None, as_written: bool = False
    ) -> list[str]:
        """The prior answer of each question: normalised, or ``as_written`` in the training data."""
        # A model fit on question types but asked without them falls back to the question text,
        # which then mostly hits the overall default.
        types = question_types if self.keyed_by == "question_type" else None
        if as_written:
            return [self.written.get(k, self.default_written) for k in self._keys(questions, types)]
        return [self.answers.get(k, self.default_answer) for k in self._keys(questions, types)]


def _text(dataset: datasets.Dataset, columns: Sequence[str]) -> dict[str, list]:
    # Select before reading so the image column is never decoded (or even read).
    return dataset.select_columns([c for c in columns if c in dataset.column_names]).to_dict()


def score_prior(
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset,
    question_column: str = "question",
    answer_column: str = "answer",
    question_type_column: str = "question_type",
    answer_type_column: str = "answer_type",
    image_id_column: str = "image_id",
) -> dict[str, float | int]:
    """Fit the baseline on `train_dataset` and score it on `eval_dataset` with `compute_vqa_metrics`.

    Question types are used only when both splits have them (the baseline's keys must exist at both ends). The
    evaluated split's `image_id_column`, when it has one, tells which rows are about one image, so that the grading
    questions of ungradable images are left out as they are for the model (`gradability.py`).
    """
    columns = [question_column, answer_column, question_type_column, answer_type_column, image_id_column]
    train, evaluated = _text(train_dataset, columns), _text(eval_dataset, columns)
    for name, split in (("training", train), ("evaluation", evaluated)):
        missing = [c for c in (question_column, answer_column) if c not in split]
        if missing:
            raise ValueError(f"The {name} split lacks the column(s) {missing} the question-prior baseline needs.")
    typed = question_type_column in train and question_type_column in evaluated
    prior = QuestionPriorBaseline().fit(
        train[question_column], train[answer_column], train[question_type_column] if typed else None
    )
    answers = prior.predict(
        evaluated[question_column], evaluated[question_type_column] if typed else None, as_written=True
    )
    return compute_vqa_metrics(
        answers,
        evaluated[answer_column],
        question_types=evaluated.get(question_type_column),
        answer_types=evaluated.get(answer_type_column),
        image_keys=evaluated.get(image_id_column),
    )
