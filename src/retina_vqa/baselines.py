"""Image-blind reference scores for the retinal VQA data.

This module owns the question-prior baseline: answer every question with the most frequent training
answer for its question type (or, without a ``question_type`` column, for its normalised question
string). A fine-tuned model has to beat these numbers to show that it looks at the image.

Usage::

    python -m retina_vqa.baselines --dataset_dir data/retinavqa-synthetic --split test
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase, strip and collapse inner whitespace: the exact-match comparison key."""
    return _SPACES.sub(" ", str(text).strip().lower())


def _text_columns(dataset: datasets.Dataset, columns: Sequence[str]) -> dict[str, list]:
    # Select before reading so the image column is never decoded (or even read).
    present = [c for c in columns if c in dataset.column_names]
    return dataset.select_columns(present).to_dict()


class QuestionPriorBaseline:
    """Most frequent training answer per question type; overall most frequent answer otherwise."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.default_answer: str = ""
        self.keyed_by: str = "question_type"

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
        for key, answer in zip(keys, answers, strict=True):
            per_key[key][normalize_text(answer)] += 1
        # Ties go to the answer seen first, so the baseline does not depend on hash order.
        self.answers = {key: counts.most_common(1)[0][0] for key, counts in per_key.items()}
        overall = collections.Counter(normalize_text(a) for a in answers)
        self.default_answer = overall.most_common(1)[0][0]
        return self

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset) -> QuestionPriorBaseline:
        """Fit on a ``datasets.Dataset`` with ``question``/``answer`` and optionally ``question_type``."""
        cols = _text_columns(dataset, ["question", "answer", "question_type"])
        missing = [c for c in ("question", "answer") if c not in cols]
        if missing:
            raise ValueError(f"training split lacks column(s) {missing}; it needs 'question' and 'answer'")
        return cls().fit(cols["question"], cols["answer"], cols.get("question_type"))

    def _keys(self, questions: Sequence[str], question_types: Sequence[str] | None) -> list[str]:
        if question_types is not None:
            if len(question_types) != len(questions):
                raise ValueError(f"got {len(questions)} questions but {len(question_types)} question types")
            return [str(t) for t in question_types]
        return [normalize_text(q) for q in questions]

    def predict(self, questions: Sequence[str], question_types: Sequence[str] | None = None) -> list[str]:
        # A model fit on question types but asked without them falls back to the question text,
        # which then mostly hits the overall default.
        types = question_types if self.keyed_by == "question_type" else None
        return [self.answers.get(k, self.default_answer) for k in self._keys(questions, types)]


def exact_match_scores(
    predictions: Sequence[str], references: Sequence[str], groups: Iterable[str] | None = None
) -> dict[str, Any]:
    """Exact match (after lowercasing and stripping) overall and per group."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    hits = [normalize_text(p) == normalize_text(r) for p, r in zip(predictions, references, strict=True)]
    result: dict[str, Any] = {
        "exact_match": sum(hits) / len(hits) if hits else 0.0,
        "num_examples": len(hits),
    }
    if groups is not None:
        totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        for group, hit in zip(groups, hits, strict=True):
            totals[group][0] += int(hit)
            totals[group][1] += 1
        result["per_question_type"] = {g: {"exact_match": h / n, "num_examples": n} for g, (h, n) in totals.items()}
    return result


def evaluate_prior(train_ds: datasets.Dataset, eval_ds: datasets.Dataset) -> dict[str, Any]:
    """Fit the question-prior baseline on ``train_ds`` and score it on ``eval_ds``.

    Returns ``{"exact_match", "num_examples", "per_question_type": {type: {"exact_match",
    "num_examples"}}}``; per-type scores are grouped by the normalised question when there is no
    ``question_type`` column.
    """
    model = QuestionPriorBaseline.from_dataset(train_ds)
    cols = _text_columns(eval_ds, ["question", "answer", "question_type"])
    missing = [c for c in ("question", "answer") if c not in cols]
    if missing:
        raise ValueError(f"evaluation split lacks column(s) {missing}; it needs 'question' and 'answer'")
    types = cols.get("question_type")
    predictions = model.predict(cols["question"], types)
    groups = types if types is not None else [normalize_text(q) for q in cols["question"]]
    return exact_match_scores(predictions, cols["answer"], groups)


def format_table(scores: dict[str, Any]) -> str:
    """A plain-text table of exact match per question type, plus the overall score."""
    per_type = scores.get("per_question_type", {})
    width = max([len("overall"), *(len(k) for k in per_type)])
    lines = [f"{'question type':<{width}}  exact match      n", "-" * (width + 22)]
    for key, value in per_type.items():
        lines.append(f"{key:<{width}}  {value['exact_match']:>11.3f}  {value['num_examples']:>5d}")
    lines.append("-" * (width + 22))
    lines.append(f"{'overall':<{width}}  {scores['exact_match']:>11.3f}  {scores['num_examples']:>5d}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m retina_vqa.baselines",
        description="Score the question-prior (image-blind) baseline on a saved VQA dataset.",
    )
    p.add_argument("--dataset_dir", required=True, help="a directory written by DatasetDict.save_to_disk")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--train_split", default="train", help="split to take the answer priors from")
    p.add_argument("--output_json", default=None, help="also write the scores to this JSON file")
    return p


def _load(dataset_dir: str) -> datasets.DatasetDict:
    import datasets

    path = Path(dataset_dir)
    if not path.is_dir():
        raise ValueError(
            f"--dataset_dir {dataset_dir} does not exist; generate one with python -m retina_vqa.synthetic"
        )
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    # An imagefolder export (split folders with metadata.jsonl) loads through the generic builder.
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dd = _load(args.dataset_dir)
        for flag, split in (("--train_split", args.train_split), ("--split", args.split)):
            if split not in dd:
                raise ValueError(f"{flag} {split!r} is not in {args.dataset_dir}; available: {', '.join(dd)}")
        scores = evaluate_prior(dd[args.train_split], dd[args.split])
    except ValueError as err:
        parser.error(str(err))
    print(f"question-prior baseline, trained on {args.train_split}, scored on {args.split}")
    print(format_table(scores))
    if args.output_json:
        out = Path(args.output_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        logger.info("Wrote %s", out)


if __name__ == "__main__":
    main()
