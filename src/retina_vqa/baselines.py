"""Command line of the question-prior baseline (`retina_vqa.metrics.prior`): image-blind scores a fine-tuned
model has to beat, with the metrics and references run_vqa.py uses for the model.

Usage::

    python -m retina_vqa.baselines --dataset_dir data/retinavqa-synthetic --split test
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from .data.loading import load_dataset_dir
from .metrics.prior import score_prior

logger = logging.getLogger(__name__)


def format_table(scores: Mapping[str, float], counts: Mapping[str, int]) -> str:
    """A plain-text table of exact match per question type, plus the overall score."""
    width = max([len("overall"), *(len(k) for k in counts)])
    lines = [f"{'question type':<{width}}  exact match      n", "-" * (width + 22)]
    for key, n in counts.items():
        lines.append(f"{key:<{width}}  {scores[f'exact_match/{key}']:>11.3f}  {n:>5d}")
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


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dd = load_dataset_dir(args.dataset_dir)
        for flag, split in (("--train_split", args.train_split), ("--split", args.split)):
            if split not in dd:
                raise ValueError(f"{flag} {split!r} is not in {args.dataset_dir}; available: {', '.join(dd)}")
        scores = score_prior(dd[args.train_split], dd[args.split])
    except (OSError, ValueError) as err:
        parser.error(str(err))
    evaluated = dd[args.split]
    types = (
        evaluated.select_columns(["question_type"])["question_type"]
        if "question_type" in evaluated.column_names
        else []
    )
    print(f"question-prior baseline, trained on {args.train_split}, scored on {args.split}")
    print(format_table(scores, dict(collections.Counter(types))))
    if args.output_json:
        out = Path(args.output_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
        logger.info("Wrote %s", out)


if __name__ == "__main__":
    main()
