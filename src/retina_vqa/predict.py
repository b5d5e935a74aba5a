"""Answer questions about fundus images with a fine-tuned BLIP VQA model.

One image, one or more questions::

    python -m retina_vqa.predict --model_name_or_path outputs/demo --image fundus.jpg \\
        --question "what is the diagnosis?" --question "is there any abnormality?"

prints, for each question::

    Question: what is the diagnosis?
    Answer: moderate dr

With several ``--image``s each image gets every question, under an ``Image: path`` line.

A whole dataset, in batches, written as JSON lines (id, question, prediction, and reference + correct when
the data has answers)::

    python -m retina_vqa.predict --model_name_or_path outputs/demo --dataset_dir data/retinavqa-synthetic \\
        --split test --output_file predictions.jsonl --batch_size 64
    python -m retina_vqa.predict --model_name_or_path outputs/demo --data_file my_images/  # imagefolder
    python -m retina_vqa.predict --model_name_or_path outputs/demo --data_file questions.jsonl

Ranked answers with probabilities (``--answer_mode auto``: the closed question types are answered with the most
likely of their known answers, saved with the model as ``answer_candidates.json``; ``rank``: every type with a
list; ``--answer_list FILE``: other lists), printed as::

    Question: what is the diagnosis?
    Answer: moderate dr
    Probabilities: moderate dr 0.712, severe dr 0.181, mild dr 0.094, proliferative dr 0.011, healthy retina 0.002

and written to the JSON lines as ``answer_scores``.

When the model folder has an out-of-distribution guard (``python -m retina_vqa.ood fit``), an image that does not
look like the training images gets, before its answers::

    Warning: this does not look like the fundus photographs the model was trained on (score 41.20 > threshold 17.93).

This module is the command line only; the Python API (`load_for_inference`, `answer_questions`) lives in
`retina_vqa.inference`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from datasets import Dataset, Image
from PIL import Image as PILImage
from tqdm.auto import tqdm
from transformers import BlipForQuestionAnswering

from .answering.candidates import ANSWER_MODES, AnswerCandidates, load_answer_candidates
from .answering.records import (
    dataset_summary,
    gradability_summary,
    graded_diagnosis_rows,
    prediction_records,
    write_cross_dataset_table,
    write_predictions,
)
from .arguments import DataTrainingArguments
from .data.images import ImageLoadError, image_key, load_image
from .data.loading import check_columns, load_raw_datasets
from .inference import (
    DEFAULT_MAX_IMAGE_SIDE,
    add_referrals,
    answer_planned,
    answer_questions,
    generation_kwargs,
    load_for_inference,
)
from .metrics.calibration import ScoredAnswer, calibration_metrics
from .metrics.grading import format_grading, grading_metrics
from .metrics.screening import find_operating_points
from .models.ranking import DEFAULT_TOP_K
from .ood import check_images, find_ood_guard, ood_warning

__all__ = ["main"]


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retina_vqa.predict",
        description="Answer questions about fundus images with a fine-tuned BLIP VQA model: given images and "
        "questions (--image, --question), or a whole dataset (--dataset_dir or --data_file).",
    )
    parser.add_argument(
        "--model_name_or_path",
        required=True,
        help="Folder saved by run_vqa.py (or a hub id of a BLIP VQA model).",
    )
    single = parser.add_argument_group("images and questions")
    single.add_argument(
        "--image",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="Image file(s); repeat the flag or give several paths. Every image gets every question.",
    )
    single.add_argument(
        "--question",
        action="extend",
        nargs="+",
        default=[],
        metavar="TEXT",
        help='Question(s), e.g. --question "what is the diagnosis?" --question "is there any abnormality?".',
    )
    data = parser.add_argument_group("a dataset")
    source = data.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset_dir",
        nargs="+",
        help="A DatasetDict saved with save_to_disk (e.g. RetinaVQA), or several: each is answered and scored, and one "
        "table compares them (cross_dataset-<split>.md and .json next to the predictions: exact match, QWK, macro "
        "AUROC, referable DR per eye and per patient, at the model's operating points).",
    )
    source.add_argument(
        "--data_file",
        help="An imagefolder folder (images + metadata.jsonl) or a JSON lines file whose image paths are "
        "relative to it.",
    )
    data.add_argument("--split", default="test", help="Split of --dataset_dir to answer (default: test).")
    data.add_argument(
        "--output_file",
        help="Where to write the predictions (JSON lines); default: predictions-<split or file name>.jsonl "
        "in the model folder.",
    )
    data.add_argument("--image_column", default="image")
    data.add_argument("--question_column", default="question")
    data.add_argument("--answer_column", default="answer", help="Reference answers, used for exact match when present.")
    data.add_argument("--max_samples", type=int, help="Answer only the first this many rows.")
    data.add_argument("--batch_size", type=int, default=32, help="Questions per forward pass.")
    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--max_new_tokens",
        type=int,
        help="Longest answer in tokens; default: the length saved with the model, else 48.",
    )
    generation.add_argument(
        "--num_beams", type=int, help="Beam search width; default: the value saved with the model, else 1."
    )
    generation.add_argument(
        "--max_image_side",
        type=int,
        default=DEFAULT_MAX_IMAGE_SIDE,
        help="Very large photographs are downsized on load to this longer side (0: never); default 2048.",
    )
    ranking = parser.add_argument_group("ranked answers")
    ranking.add_argument(
        "--answer_mode",
        choices=ANSWER_MODES,
        default="generate",
        help="'generate' (default: free generation), 'auto' (rank the closed question types over the answers saved "
        "with the model, answer_candidates.json, with a probability per candidate; generate the open ones) or "
        "'rank' (rank every question type that has a list).",
    )
    ranking.add_argument(
        "--answer_list",
        metavar="FILE",
        help="Candidate answers instead of the model's: a JSON list (for every question), "
        '{"question_type": ["answer", ...]}, or an answer_candidates.json.',
    )
    ranking.add_argument(
        "--question_type_column",
        default="question_type",
        help="Dataset column naming each question's type (else the type of its wording in the candidates).",
    )
    ranking.add_argument(
        "--top_k",
        type=int,
        default=DEFAULT_TOP_K,
        help=f"Longer candidate lists are pre-selected by their first token's probability (default {DEFAULT_TOP_K}).",
    )
    generation.add_argument("--device", help="cuda, cuda:1, cpu, ...; default: cuda if available.")
    generation.add_argument(
        "--attn_implementation",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="Fused attention (default) or transformers' eager BLIP attention; the answers are the same.",
    )
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """One line on stderr and exit status 2, like argparse, without the usage block or a traceback."""
    parser.exit(2, f"{parser.prog}: error: {' '.join(str(message).split())}\n")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    dataset_mode = args.dataset_dir is not None or args.data_file is not None
    if dataset_mode and (args.image or args.question):
        _fail(parser, "give either --image/--question or a dataset (--dataset_dir/--data_file), not both.")
    if not dataset_mode:
        if not args.image:
            _fail(parser, "nothing to answer: give --image and --question, or --dataset_dir/--data_file.")
        if not args.question:
            _fail(parser, "give at least one --question to ask about the image(s).")
        if any(not question.strip() for question in args.question):
            _fail(parser, "--question must not be empty.")
    if args.answer_list is not None and args.answer_mode == "generate":
        _fail(parser, "--answer_list gives answers to rank: add --answer_mode auto (or rank).")
    for name in ("batch_size", "max_new_tokens", "num_beams", "max_samples", "top_k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            _fail(parser, f"--{name} must be at least 1, got {value}.")
    if args.max_image_side < 0:
        _fail(parser, f"--max_image_side must be positive (or 0 for no limit), got {args.max_image_side}.")


def _load(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[BlipForQuestionAnswering, Any]:
    try:
        model, processor = load_for_inference(
            args.model_name_or_path, device=args.device, attn_implementation=args.attn_implementation
        )
        find_ood_guard(model)  # a broken or mismatched out-of-distribution guard is named here, before any work
        return model, processor
    except (OSError, ValueError) as error:
        _fail(parser, f"cannot load a model from {args.model_name_or_path!r}: {error}")


def _candidates(parser: argparse.ArgumentParser, args: argparse.Namespace) -> AnswerCandidates | None:
    """The lists to rank against: --answer_list (question wordings from the model's lists), else the model's."""
    if args.answer_mode == "generate":
        return None
    try:
        saved = load_answer_candidates(args.model_name_or_path)
        candidates = AnswerCandidates.from_file(args.answer_list, base=saved) if args.answer_list else saved
    except (OSError, ValueError) as error:
        _fail(parser, str(error))
    if candidates is None:
        _fail(
            parser,
            f"--answer_mode {args.answer_mode}: {args.model_name_or_path!r} has no answer_candidates.json (run_vqa.py "
            "saves one with every trained model); pass --answer_list FILE.",
        )
    return candidates


def _format_scores(scores: dict[str, float], shown: int = 5) -> str:
    text = ", ".join(f"{answer} {p:.3f}" for answer, p in list(scores.items())[:shown])
    return text + (f", ... ({len(scores) - shown} more)" if len(scores) > shown else "")


def _format_referral(decision: dict) -> str:
    points = "; ".join(f"{name.replace('_', ' ')}: {call}" for name, call in decision.items() if name != "p_referable")
    return f"P(referable) {decision['p_referable']:.3f}; {points}"


def _format_gradability(numbers: dict) -> str:
    """The ungradable line of a dataset's summary: the model's rate, and the reference's with what it left out."""
    line = f"Ungradable images: model {numbers['predicted_ungradable_rate']:.3f}"
    if "ungradable_rate" in numbers:
        line += (
            f", reference {numbers['ungradable_rate']:.3f} ({numbers['ungradable_images']} images; their "
            f"{numbers['ungradable_rows']} grading questions left out of the grading metrics)"
        )
    return line


def _predict_images(parser: argparse.ArgumentParser, args: argparse.Namespace, max_side: int | None) -> None:
    images = []
    for path in args.image:
        try:
            images.append(load_image(path, max_side=max_side))
        except ImageLoadError as error:
            _fail(parser, str(error))
    candidates = _candidates(parser, args)
    model, processor = _load(parser, args)
    pairs = [(image, question) for image in images for question in args.question]
    answers = answer_questions(
        model,
        processor,
        [image for image, _ in pairs],
        [question for _, question in pairs],
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        batch_size=args.batch_size,
        max_image_side=max_side,
        answer_mode=args.answer_mode,
        answer_candidates=candidates,
        return_scores=True,
        top_k=args.top_k,
        operating_points=find_operating_points(args.model_name_or_path),
    )
    answers_iter = iter(answers)
    for path in args.image:
        if len(args.image) > 1:
            print(f"Image: {path}")
        for k, question in enumerate(args.question):
            answer = next(answers_iter)
            # Out-of-distribution guard (saved with the model): the warning comes before the image's answers.
            check = answer.get("out_of_distribution")
            if k == 0 and check is not None and check["flagged"]:
                print(ood_warning(check))
            print(f"Question: {question}")
            print(f"Answer: {answer['answer']}")
            if answer["answer_scores"] is not None:
                print(f"Probabilities: {_format_scores(answer['answer_scores'])}")
            if "referral" in answer:
                print(f"Referral: {_format_referral(answer['referral'])}")
            if "screening" in answer:  # the model called the image ungradable: no grade, no referral
                print(f"Screening: {answer['screening']}")


def _load_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Dataset, str]:
    """The rows to answer and a name for them (the split, or the data file's name)."""
    split = args.split
    data_args = DataTrainingArguments(
        dataset_dir=args.dataset_dir,
        test_file=args.data_file,
        test_split=split,
        image_column=args.image_column,
        question_column=args.question_column,
        answer_column=args.answer_column,
    )
    try:
        raw = load_raw_datasets(data_args)
    except (OSError, ValueError) as error:
        _fail(parser, str(error))
    if split not in raw:
        _fail(parser, f"--split {split!r} is not in {args.dataset_dir}; it has {list(raw)}.")
    dataset = raw[split]
    try:
        check_columns(dataset, split, {"image_column": args.image_column, "question_column": args.question_column})
    except ValueError as error:
        _fail(parser, str(error))
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    questions = dataset.select_columns([args.question_column])[args.question_column]
    empty = [row for row, question in enumerate(questions) if question is None or not str(question).strip()]
    if empty:
        rows = ", ".join(str(row) for row in empty[:10])
        _fail(parser, f"{len(empty)} empty questions (rows {rows}{', ...' if len(empty) > 10 else ''}).")
    name = split if args.dataset_dir is not None else Path(args.data_file.rstrip("/\\")).stem
    if getattr(args, "dataset_label", None):  # one of several datasets: its folder's name too
        name = f"{args.dataset_label}-{name}"
    return dataset, name


def _default_output_file(model_name_or_path: str, name: str) -> str:
    folder = model_name_or_path if os.path.isdir(model_name_or_path) else "."
    return os.path.join(folder, f"predictions-{name}.jsonl")


def _predict_dataset(
    parser: argparse.ArgumentParser, args: argparse.Namespace, max_side: int | None
) -> dict[str, float | int | str]:
    dataset, name = _load_dataset(parser, args)
    output_file = args.output_file or _default_output_file(args.model_name_or_path, name)
    candidates = _candidates(parser, args)
    model, processor = _load(parser, args)
    settings = generation_kwargs(model, args.max_new_tokens, args.num_beams)

    rows = dataset.select_columns([args.image_column, args.question_column])
    if isinstance(rows.features[args.image_column], Image):
        # Undecoded {"bytes", "path"} dicts: load_image reports bad files with their row and path.
        rows = rows.cast_column(args.image_column, Image(decode=False))
    images = rows.select_columns([args.image_column])
    keys = [image_key(image) for batch in images.iter(batch_size=256) for image in batch[args.image_column]]

    def load(indices: list[int]) -> list[PILImage.Image]:
        sources = images.select(indices)[args.image_column]
        where = "row {} of {!r}, column {!r}"
        return [
            load_image(source, where=where.format(row, name, args.image_column), max_side=max_side)
            for row, source in zip(indices, sources, strict=True)
        ]

    questions = rows.select_columns([args.question_column]).to_dict()[args.question_column]
    types = [None] * len(questions)
    if args.question_type_column in dataset.column_names:
        types = dataset.select_columns([args.question_type_column]).to_dict()[args.question_type_column]
    row_sets = None
    if candidates is not None:
        row_sets = candidates.assign(questions, types, args.answer_mode)
        types = [t if t is not None else candidates.question_type(q) for q, t in zip(questions, types, strict=True)]
    with tqdm(total=len(rows), desc=f"Answering {name}", unit="question") as progress:
        try:
            answered = answer_planned(
                model,
                processor,
                keys,
                questions,
                load,
                args.batch_size,
                settings,
                progress=progress,
                candidates=candidates,
                row_sets=row_sets,
                question_types=types,
                top_k=args.top_k,
                return_scores=True,
            )
        except ImageLoadError as error:
            progress.close()
            _fail(parser, str(error))

    answer_column = args.answer_column if args.answer_column in dataset.column_names else None
    records = prediction_records(
        dataset,
        [a["answer"] for a in answered],
        args.question_column,
        answer_column,
        answer_scores=[a["answer_scores"] for a in answered],
    )
    points = find_operating_points(args.model_name_or_path)
    # The saved operating points: each ranked diagnosis answer's referral; "ungradable: re-image" instead for the
    # grading answers of an image whose quality question the model answered "no".
    add_referrals(answered, points or [], keys)
    for record, answer in zip(records, answered, strict=True):
        for key in ("referral", "screening"):
            if key in answer:
                record[key] = answer[key]
    # Out-of-distribution guard saved with the model: each record gets its image's check, and a count is printed.
    guard = find_ood_guard(model)
    if guard is not None:
        checks = check_images(guard, model, processor, keys, load, args.batch_size)
        for record, check in zip(records, checks, strict=True):
            record["out_of_distribution"] = check
        flagged = {key for key, check in zip(keys, checks, strict=True) if check["flagged"]}
        print(
            f"Out-of-distribution guard: {len(flagged)} of {len(set(keys))} images flagged as not looking like the "
            f"fundus photographs the model was trained on (score > {guard.threshold:.2f})."
        )
    Path(output_file).parent.mkdir(parents=True, exist_ok=True)
    write_predictions(output_file, records)
    summary = f"Answered {len(records)} questions of {name!r}"
    if answer_column is not None and records:
        correct = sum(record["correct"] for record in records)
        summary += f": exact match {correct / len(records):.4f} ({correct}/{len(records)})"
    print(f"{summary}; predictions written to {output_file}")
    # The diagnosis question's grading metrics (kappa, referable / any DR sensitivity and specificity), as
    # run_vqa.py reports them, when the data says which rows are diagnosis questions: on gradable images only.
    gradability = gradability_summary(records, keys)
    if gradability:
        print(_format_gradability(gradability))
    diagnosis = [records[i] for i in graded_diagnosis_rows(records, keys)]
    grading = grading_metrics([r["reference"] for r in diagnosis], [r["prediction"] for r in diagnosis])
    lines = format_grading(grading)
    if lines:
        plural = "" if len(diagnosis) == 1 else "s"
        print(f"Diagnosis ({len(diagnosis)} question{plural}): " + "\n  ".join(lines))
    if row_sets is not None and answer_column is not None:
        ranked = []
        graded = set(graded_diagnosis_rows(records, keys))  # the referable-DR AUC leaves ungradable eyes out
        for row, (record, set_name) in enumerate(zip(records, row_sets, strict=True)):
            if set_name is not None:
                scores = record["answer_scores"]
                with np.errstate(divide="ignore"):  # log-probabilities: a candidate never scored has probability 0
                    log_probs = np.log(np.array(list(scores.values())))
                kind = record.get("question_type")
                gradable = kind != "diagnosis" or row in graded
                ranked.append(ScoredAnswer(set_name, tuple(scores), log_probs, record["reference"], kind, gradable))
        if ranked:
            # The probabilities written (temperature-scaled when the model was calibrated).
            numbers = calibration_metrics(ranked)
            auc = numbers.get("diagnosis_referable_auc")
            print(
                f"Ranked {len(ranked)} questions: accuracy {numbers['ranked_accuracy']:.4f}, ECE {numbers['ece']:.4f}"
                + ("" if auc is None else f", referable-DR ROC AUC {auc:.4f}")
            )
    patients = None
    if "patient_id" in dataset.column_names:
        patients = dataset.select_columns(["patient_id"]).to_dict()["patient_id"]
    return dataset_summary(name, records, patients, points, keys)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    max_side = args.max_image_side or None
    if args.dataset_dir is not None and len(args.dataset_dir) > 1:
        if args.output_file is not None:
            _fail(parser, "--output_file names one file: with several --dataset_dir each gets its own, in the model "
                  "folder (predictions-<folder>-<split>.jsonl). Drop --output_file.")  # fmt: skip
        summaries = []
        for dataset_dir in args.dataset_dir:
            one = argparse.Namespace(**{**vars(args), "dataset_dir": dataset_dir})
            one.dataset_label = Path(dataset_dir.rstrip("/\\")).name
            summaries.append(_predict_dataset(parser, one, max_side))
        folder = args.model_name_or_path if os.path.isdir(args.model_name_or_path) else "."
        print(write_cross_dataset_table(summaries, os.path.join(folder, f"cross_dataset-{args.split}")))
    elif args.dataset_dir is not None or args.data_file is not None:
        if args.dataset_dir is not None:
            args.dataset_dir = args.dataset_dir[0]
        _predict_dataset(parser, args, max_side)
    else:
        _predict_images(parser, args, max_side)


if __name__ == "__main__":
    # The loading bars of transformers would drown the few lines this prints.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    main()
