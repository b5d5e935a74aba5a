"""The question encoder with each image's keys and values projected once, against once per question.

BLIP's question encoder cross-attends from every question to its image's patch states. When several questions
of a batch are about one image (training with ``--group_by_image``; evaluation and ``predict`` answer all of an
image's questions together), ``models.attention.shared_encoder_rows`` projects each distinct image once; before,
the image's states were repeated per question and projected once per question. Variants, alternated in one
process on the same weights and inputs:

* ``per_image``: ``models.blip.encode_questions(model, images, ids, mask, image_index)`` (the recipe);
* ``per_question``: the same call with the sharing switched off (the images' rows repeated, as before).

Two workloads per model size: ``train`` (forward and backward, ``--train_questions`` questions about
``--train_images`` images, as a grouped training batch) and ``answer`` (forward without gradients, 13
questions about each of ``--answer_images`` images, as ``predict`` runs). Random weights and images: the time
does not depend on them. Prints milliseconds per call (median of ``--repeats``) and the speed-up.

    python bench/question_encoder.py                 # tiny (128 px) and blip-vqa-base (384 px)
    python bench/question_encoder.py --sizes tiny --quick
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import torch

QUESTIONS_PER_IMAGE = 13  # synthetic RetinaVQA
QUESTION_TOKENS = 12  # about the length of its questions, with [CLS] and [SEP]


def _inputs(model, images: int, questions: int, generator: torch.Generator):
    from retina_vqa.models.blip import encode_images

    size = model.config.vision_config.image_size
    with torch.no_grad():
        states = encode_images(model, torch.randn(images, 3, size, size, generator=generator))
    index = torch.arange(images).repeat_interleave(-(-questions // images))[:questions]
    vocab = model.config.text_config.vocab_size
    input_ids = torch.randint(5, min(vocab, 280), (questions, QUESTION_TOKENS), generator=generator)
    return states, index, input_ids, torch.ones_like(input_ids)


def _timer(step, inputs, repeated: bool):
    """A variant: milliseconds of one ``step(*inputs)``, with the sharing on (per image) or off (per question)."""

    def timed() -> float:
        start = time.perf_counter()
        if repeated:
            with common.repeated_image_keys():
                step(*inputs)
        else:
            step(*inputs)
        return (time.perf_counter() - start) * 1e3

    return timed


def bench_size(size: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    from retina_vqa.models.blip import encode_questions

    image_size = common.DEFAULT_IMAGE_SIZE[size]
    processor = common.load_processor(image_size)
    model = common.recipe_model(size, image_size, processor)
    generator = torch.Generator().manual_seed(0)
    workloads = {
        "train": _inputs(model, args.train_images, args.train_questions, generator),
        "answer": _inputs(model, args.answer_images, QUESTIONS_PER_IMAGE * args.answer_images, generator),
    }

    def train(states, index, ids, mask):
        model.train()
        states = states.clone().requires_grad_(True)
        encode_questions(model, states, ids, mask, index).sum().backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def answer(states, index, ids, mask):
        model.eval()
        encode_questions(model, states, ids, mask, index)

    rows = []
    for name, inputs in workloads.items():
        step = train if name == "train" else answer
        step(*inputs)  # warm-up: allocator, first-call set-up
        results = common.alternate(
            {"per_image": _timer(step, inputs, False), "per_question": _timer(step, inputs, True)},
            args.repeats,
        )
        summary = common.summarise(results, baseline="per_question")
        rows.append(
            {
                "size": size,
                "image_size": image_size,
                "workload": name,
                "questions": int(inputs[1].numel()),
                "images": int(inputs[0].shape[0]),
                "ms": summary,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,full", help="comma-separated: tiny (configs/blip-tiny), full")
    parser.add_argument("--train_questions", type=int, default=8, help="blip-vqa-base's batch in train_throughput")
    parser.add_argument("--train_images", type=int, default=4, help="2 questions per image, as by default")
    parser.add_argument("--answer_images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    common.quiet()
    rows = [row for size in args.sizes.split(",") if size for row in bench_size(size, args)]
    common.emit_json("question_encoder", {"quick": args.quick, "results": rows})
    table = []
    for row in rows:
        shared, repeated = row["ms"]["per_image"], row["ms"]["per_question"]
        table.append(
            [
                row["size"],
                row["image_size"],
                row["workload"],
                f"{row['questions']} / {row['images']}",
                repeated["median"],
                shared["median"],
                round(repeated["median"] / shared["median"], 2),
            ]
        )
    common.print_table(
        f"Question encoder, ms per call (median of {args.repeats}; speed-up = per question / per image)",
        ["model", "px", "workload", "questions / images", "per question", "per image", "speed-up"],
        table,
    )
    return rows


if __name__ == "__main__":
    main()
