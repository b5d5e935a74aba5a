"""Ranked answers against generated ones on one trained model: accuracy per question type, the calibration of the
ranked answers' probabilities before and after temperature scaling, the diagnosis question's referable-DR ROC AUC,
and the cost per question of each answer mode.

* ``generate``: every answer generated (greedy, the length saved with the model): `retina_vqa.inference.answer_planned`
  as ``python -m retina_vqa.predict`` runs it;
* ``rank``: every question whose type has a candidate list (all 13 synthetic types) answered with the most likely
  of its candidates (`retina_vqa.models.ranking`: image and question encoded once, one decoder pass over the
  candidates); ``auto`` ranks the closed types and generates the open ones.

The candidate lists are those saved with the model (``answer_candidates.json``), else the training split's. The
temperatures are fitted on the validation split (one per type, `metrics.calibration.fit_temperatures`) and applied
to the test split, so the "after" numbers are out of sample. Timing: the questions of ``--timing_images`` test images
(all, the closed types, the open ones, the diagnosis), each mode run alternately ``--repeats`` times; milliseconds per
question, median; the images are decoded beforehand, their encoding is included.

    python bench/answer_ranking.py --model_name_or_path outputs/demo --dataset_dir data/retinavqa-synthetic
    python bench/answer_ranking.py --quick      # smoke test: a random tiny model on a few synthetic images
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import common
import numpy as np
import torch

from retina_vqa.answering.candidates import AnswerCandidates, load_answer_candidates
from retina_vqa.data.images import image_key, load_image
from retina_vqa.inference import answer_planned, generation_kwargs, load_for_inference
from retina_vqa.metrics import normalize_answer
from retina_vqa.metrics.calibration import ScoredAnswer, calibration_metrics, fit_temperatures, probabilities

MODES = ("generate", "auto", "rank")


class Split:
    """A split's questions, references, types and images, answerable by `answer_planned`."""

    def __init__(self, dataset: Any, max_rows: int | None = None) -> None:
        from datasets import Image

        if max_rows is not None:
            dataset = dataset.select(range(min(max_rows, len(dataset))))
        dataset = dataset.cast_column("image", Image(decode=False))
        text = dataset.select_columns(["question", "answer", "question_type"]).to_dict()
        self.questions, self.answers, self.types = text["question"], text["answer"], text["question_type"]
        self.images = dataset.select_columns(["image"])
        self.keys = [image_key(image) for image in self.images["image"]]

    def __len__(self) -> int:
        return len(self.questions)

    def subset(self, rows: list[int]) -> Split:
        part = object.__new__(Split)
        part.questions = [self.questions[i] for i in rows]
        part.answers = [self.answers[i] for i in rows]
        part.types = [self.types[i] for i in rows]
        part.images = self.images.select(rows)
        part.keys = [self.keys[i] for i in rows]
        return part

    def load(self, rows: list[int]) -> list[Any]:
        return [load_image(source) for source in self.images.select(rows)["image"]]


def answer(model, processor, split: Split, candidates: AnswerCandidates, mode: str, batch_size: int) -> list[dict]:
    settings = generation_kwargs(model, None, None)
    row_sets = None
    if mode != "generate":
        row_sets = [candidates.set_for(q, t, mode) for q, t in zip(split.questions, split.types, strict=True)]
    return answer_planned(
        model,
        processor,
        split.keys,
        split.questions,
        split.load,
        batch_size,
        settings,
        candidates=candidates,
        row_sets=row_sets,
        question_types=split.types,
        return_scores=True,
    )


def scored(split: Split, results: list[dict]) -> list[ScoredAnswer]:
    """The ranked rows as calibration rows: log-probabilities at temperature 1 are the scores up to a constant,
    which softmax(score / T) does not see."""
    rows = []
    for result, reference, question_type in zip(results, split.answers, split.types, strict=True):
        scores = result["answer_scores"]
        if scores is None:
            continue
        with np.errstate(divide="ignore"):
            log_probs = np.log(np.array(list(scores.values())))
        rows.append(ScoredAnswer(question_type, tuple(scores), log_probs, reference, question_type))
    return rows


def records(rows: list[ScoredAnswer], temperatures: dict[str, float]) -> list[dict[str, Any]]:
    """`rows` as predictions.jsonl records (question type, answer_scores, correct) at the given temperatures."""
    result = []
    for row in rows:
        probs = probabilities(row.scores, temperatures.get(row.set_name, 1.0))
        top = row.answers[int(np.argmax(probs))]
        result.append(
            {
                "question_type": row.question_type,
                "answer_scores": dict(zip(row.answers, probs.tolist(), strict=True)),
                "correct": normalize_answer(top) == normalize_answer(row.reference),
            }
        )
    return result


def accuracy_by_type(split: Split, results: list[dict]) -> dict[str, float]:
    right: dict[str, list[bool]] = {}
    for result, reference, question_type in zip(results, split.answers, split.types, strict=True):
        right.setdefault(question_type, []).append(normalize_answer(result["answer"]) == normalize_answer(reference))
    right["all"] = [r for values in list(right.values()) for r in values]
    return {t: float(np.mean(v)) for t, v in right.items()}


def timing(model, processor, split: Split, candidates, batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Milliseconds per question for each mode (median of `repeats`, modes alternated), on all of `split`, its
    closed and open question types, and the diagnosis questions. The images are decoded once beforehand; their
    encoding (once per image and run) is in the time of every mode alike."""
    decoded = split.load(list(range(len(split))))
    split.load = lambda rows: [decoded[i] for i in rows]
    closed = {t for t, is_closed in candidates.closed.items() if is_closed}
    groups = {
        "all questions": list(range(len(split))),
        "closed types": [i for i, t in enumerate(split.types) if t in closed],
        "open types (free text)": [i for i, t in enumerate(split.types) if t not in closed],
        "diagnosis": [i for i, t in enumerate(split.types) if t == "diagnosis"],
    }
    table: dict[str, dict[str, float]] = {}
    for name, rows in groups.items():
        if not rows:
            continue
        part = split.subset(rows)
        part.load = lambda positions, rows=rows: [decoded[rows[i]] for i in positions]

        def run(mode: str, part: Split = part) -> float:
            start = time.perf_counter()
            answer(model, processor, part, candidates, mode, batch_size)
            return (time.perf_counter() - start) * 1000 / len(part)

        variants = {mode: (lambda mode=mode: run(mode)) for mode in MODES}
        print(f"timing {name} ({len(part)} questions)", file=sys.stderr, flush=True)
        results = common.alternate(variants, repeats)
        table[name] = {mode: common.median(values) for mode, values in results.items()}
        table[name]["questions"] = len(part)
    return table


def quick_model(dataset_dir):
    """A random tiny BLIP saved like run_vqa.py saves one, with the training split's candidates."""
    import tempfile

    from transformers import AutoConfig, AutoProcessor, BlipForQuestionAnswering

    from retina_vqa.models.generation_config import configure_answer_generation

    folder = tempfile.mkdtemp(prefix="answer-ranking-")
    config = AutoConfig.from_pretrained(common.TINY_CONFIG)
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(config)
    configure_answer_generation(model, 12)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(common.TINY_CONFIG).save_pretrained(folder)
    AnswerCandidates.from_dataset(common.load_split(dataset_dir, "train").remove_columns("image")).save(folder)
    return folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default="outputs/demo")
    parser.add_argument("--dataset_dir", default="data/retinavqa-synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--calibration_split", default="validation", help="where the temperatures are fitted")
    parser.add_argument("--max_samples", type=int, help="answer only the first this many rows of each split")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--timing_images", type=int, default=50, help="test images (13 questions each) timed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--figure", help="write the test split's reliability diagram, before and after temperature scaling, here"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: random tiny model, 4 test images, 1 repeat")
    args = parser.parse_args(argv)
    common.quiet()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if args.quick:
        args.dataset_dir = str(common.synthetic_dataset(8, 4, 64))
        args.calibration_split = "test"  # the quick set has no validation split of its own
        args.model_name_or_path = quick_model(args.dataset_dir)
        args.timing_images, args.repeats = 2, 1
    model, processor = load_for_inference(args.model_name_or_path, device="cpu")
    candidates = load_answer_candidates(args.model_name_or_path)
    if candidates is None:
        train = common.load_split(args.dataset_dir, "train").remove_columns("image")
        candidates = AnswerCandidates.from_dataset(train)
    candidates.temperatures = {}  # fitted below, on the calibration split

    test = Split(common.load_split(args.dataset_dir, args.split), args.max_samples)
    calibration = Split(common.load_split(args.dataset_dir, args.calibration_split), args.max_samples)
    print(f"answering {len(test)} {args.split} questions (generate, rank)", file=sys.stderr, flush=True)
    generated = answer(model, processor, test, candidates, "generate", args.batch_size)
    ranked = answer(model, processor, test, candidates, "rank", args.batch_size)
    print(f"ranking {len(calibration)} {args.calibration_split} questions", file=sys.stderr, flush=True)
    calibration_ranked = answer(model, processor, calibration, candidates, "rank", args.batch_size)
    temperatures = fit_temperatures(scored(calibration, calibration_ranked))
    rows = scored(test, ranked)
    calibrated = calibration_metrics(rows, temperatures)
    if args.figure:
        from retina_vqa.plots import plot_calibration

        plot_calibration(records(rows, temperatures), args.figure, uncalibrated=records(rows, {}))
    closed = {t for t, is_closed in candidates.closed.items() if is_closed}
    auto = [r if t in closed else g for r, g, t in zip(ranked, generated, test.types, strict=True)]
    accuracy = {
        "generate": accuracy_by_type(test, generated),
        "rank": accuracy_by_type(test, ranked),
        "auto": accuracy_by_type(test, auto),
    }

    image_rows = list(dict.fromkeys(test.keys))[: args.timing_images]
    chosen = set(image_rows)
    timed = timing(
        model,
        processor,
        test.subset([i for i, key in enumerate(test.keys) if key in chosen]),
        candidates,
        args.batch_size,
        args.repeats,
    )

    types = list(dict.fromkeys(test.types))
    table = []
    for question_type in [*types, "all"]:
        group = question_type if question_type != "all" else None
        table.append(
            [
                question_type,
                sum(t == question_type for t in test.types) if group else len(test),
                accuracy["generate"][question_type],
                accuracy["rank"][question_type],
                calibrated.get(f"ece/{group}" if group else "ece", float("nan")),
                calibrated.get(f"ece_calibrated/{group}" if group else "ece_calibrated", float("nan")),
                temperatures.get(question_type, float("nan")) if group else float("nan"),
            ]
        )
    common.print_table(
        f"{args.split} split of {args.dataset_dir}, model {args.model_name_or_path}: accuracy (VQA-normalised exact "
        f"match) and ECE (10 bins) of the ranked answers, temperatures fitted on {args.calibration_split}",
        ["question type", "questions", "generate", "rank", "ECE T=1", "ECE scaled", "T"],
        table,
    )
    auc = (calibrated.get("diagnosis_referable_auc"), calibrated.get("diagnosis_referable_auc_calibrated"))
    print(f"\nauto (rank closed types, generate open ones): all questions {accuracy['auto']['all']:.4f}")
    if auc[0] is not None:
        print(f"diagnosis: referable-DR ROC AUC of P(moderate or worse) {auc[0]:.4f} (T=1), {auc[1]:.4f} (scaled)")
    common.print_table(
        f"ms per question, median of {args.repeats} ({args.timing_images} test images, decoded beforehand; image "
        f"encoding included; batch {args.batch_size})",
        ["questions", "count", *MODES, "rank / generate"],
        [
            [name, t["questions"], *(t[m] for m in MODES), common.ratio(t["rank"], t["generate"])]
            for name, t in timed.items()
        ],
    )
    payload = {
        "model": args.model_name_or_path,
        "split": args.split,
        "accuracy": accuracy,
        "calibration": calibrated,
        "temperatures": temperatures,
        "ms_per_question": timed,
    }
    common.emit_json("answer_ranking", payload)
    return payload


if __name__ == "__main__":
    main()
