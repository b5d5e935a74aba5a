"""Answering throughput: the recipe's batched masked generation against one ``model.generate`` per question.

Variants, run alternately in one process over the same test split and the same weights:

* ``planned``: `retina_vqa.predict.answer_questions` (what ``python -m retina_vqa.predict --dataset_dir``
  runs) on the split's encoded images and questions: each distinct image decoded and encoded once, then the
  questions sorted by text (answers of similar length together) in batches of ``--batch_size``, answered by
  ``models.blip.generate_answers`` (the real question mask), greedy, fused attention;
* ``batched``: the test split in dataset order, tokenised by ``data.preprocessing.prepare_split`` and batched by
  ``VqaCollator`` (``--batch_size`` questions, each distinct image once), answered by ``generate_answers``
  as the Trainer evaluates with ``--group_eval_by_question false``, greedy, fused attention;
* ``one_by_one``: per question, ``processor(images=image, text=question, return_tensors="pt")`` and
  transformers' own ``model.generate`` (eager attention) with batch 1, greedy, the same answer length.

One at a time there is no padding, so the masked batched answers must be identical: the benchmark compares
every answer (token ids for ``batched``, the answer strings for ``planned``) and exits non-zero on any
difference. The default model is a random tiny BLIP with a wide initialisation (``initializer_range`` 0.5:
``models.tiny_blip.random_tiny_blip``), whose answers vary with image and question and run to the length
limit; ``--model_name_or_path outputs/demo`` uses the trained demo model (short answers ending at ``[SEP]``).
Image decoding, collation and processor calls are inside the timing for every variant.

    python bench/generation_throughput.py            # 16 test images x 13 questions, batch 32
    python bench/generation_throughput.py --model_name_or_path outputs/demo
    python bench/generation_throughput.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from typing import Any

import common
import torch


def train_model(processor, dataset_dir, steps: int, batch_size: int, seed: int):
    """The recipe's tiny model after ``steps`` AdamW steps (lr 1e-3) on the training split."""
    from retina_vqa.data.preprocessing import prepare_split

    model = common.recipe_model("tiny", processor.image_processor.size["height"], processor, seed=seed)
    dargs = common.data_args(dataset_dir)
    train = prepare_split(common.load_split(dataset_dir, "train"), processor.tokenizer, dargs, True, "train")
    loader = common.recipe_loader(train, common.recipe_collator(processor, dargs), batch_size, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for batch in itertools.islice(batches, steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def trim(ids: list[int], sep_id: int, pad_id: int) -> tuple[int, ...]:
    """Answer ids up to and including the first [SEP], without padding."""
    out = []
    for token in ids:
        if token == pad_id:
            continue
        out.append(token)
        if token == sep_id:
            break
    return tuple(out)


def answer_batched(model, prepared, collator, batch_size: int, max_length: int) -> list[tuple[int, ...]]:
    from retina_vqa.models.blip import generate_answers

    text = model.config.text_config
    answers: list[tuple[int, ...]] = []
    for start in range(0, len(prepared), batch_size):
        rows = [prepared[i] for i in range(start, min(start + batch_size, len(prepared)))]
        batch = collator(rows)
        generated = generate_answers(
            model,
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            image_index=batch.get("image_index"),
            max_length=max_length,
            num_beams=1,
            do_sample=False,
        )
        answers.extend(trim(row, text.sep_token_id, text.pad_token_id) for row in generated.tolist())
    return answers


def answer_planned(model, processor, raw, batch_size: int, max_length: int) -> list[str]:
    """`retina_vqa.predict.answer_questions` on the split's encoded images (each image encoded once, questions
    grouped by text): answer strings, as the API returns them."""
    from datasets import Image

    from retina_vqa.inference import answer_questions

    columns = raw.cast_column("image", Image(decode=False)).select_columns(["image", "question"]).to_dict()
    answers = answer_questions(
        model,
        processor,
        columns["image"],
        columns["question"],
        max_new_tokens=max_length - 1,
        num_beams=1,
        batch_size=batch_size,
    )
    return answers


@torch.no_grad()
def answer_one_by_one(model, raw, processor, max_length: int) -> list[tuple[int, ...]]:
    text = model.config.text_config
    answers: list[tuple[int, ...]] = []
    for i in range(len(raw)):
        row = raw[i]
        inputs = processor(images=row["image"].convert("RGB"), text=row["question"], return_tensors="pt")
        generated = model.generate(**inputs, max_length=max_length, num_beams=1, do_sample=False)
        answers.append(trim(generated[0].tolist(), text.sep_token_id, text.pad_token_id))
    return answers


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_test_images", type=int, default=16, help="13 questions each")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_answer_length", type=int, default=48, help="the recipe's default, with [DEC]")
    parser.add_argument("--train_steps", type=int, default=0, help="0: random init with --init_range")
    parser.add_argument("--num_train_images", type=int, default=32, help="for the training steps")
    parser.add_argument("--init_range", type=float, default=0.5, help="only with --train_steps 0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--model_name_or_path", default=None, help="a trained model (e.g. outputs/demo) instead of a random one"
    )
    parser.add_argument(
        "--attn_implementation", default="sdpa", choices=["sdpa", "eager"], help="the recipe side's attention"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 test images, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_test_images, args.repeats, args.num_train_images = 2, 1, 4
    common.quiet()
    from retina_vqa.data.preprocessing import prepare_split
    from retina_vqa.metrics import decode_ids
    from retina_vqa.models.attention import set_attention_implementation
    from retina_vqa.models.generation_config import configure_answer_generation
    from retina_vqa.models.tiny_blip import random_tiny_blip

    dataset_dir = common.synthetic_dataset(args.num_train_images, args.num_test_images, args.image_size)
    raw = common.load_split(dataset_dir, "test")
    processor = common.load_processor(args.image_size)
    dargs = common.data_args(dataset_dir)
    prepared = prepare_split(raw, processor.tokenizer, dargs, with_answers=False, description="test")
    collator = common.recipe_collator(processor, dargs)
    if args.model_name_or_path:
        from retina_vqa.inference import load_for_inference

        model, processor = load_for_inference(args.model_name_or_path, device="cpu")
        prepared = prepare_split(raw, processor.tokenizer, dargs, with_answers=False, description="test")
        collator = common.recipe_collator(processor, dargs)
    elif args.train_steps > 0:
        model = train_model(processor, dataset_dir, args.train_steps, 32, seed=0)
    else:
        model = random_tiny_blip(common.TINY_CONFIG, args.init_range, seed=0)
    configure_answer_generation(model, args.max_answer_length)
    # The recipe answers with fused attention; the notebook side is transformers' own (eager) BLIP, same weights.
    set_attention_implementation(model, args.attn_implementation)
    stock = copy.deepcopy(model)
    set_attention_implementation(stock, "eager")
    print(f"{len(raw)} questions about {args.num_test_images} images, batch {args.batch_size}", file=sys.stderr)

    outputs: dict[str, list] = {}

    def timed(name: str, fn) -> float:
        start = time.perf_counter()
        outputs[name] = fn()
        return len(raw) / (time.perf_counter() - start)

    length, batch = args.max_answer_length, args.batch_size
    variants = {
        "planned": lambda: timed("planned", lambda: answer_planned(model, processor, raw, batch, length)),
        "batched": lambda: timed("batched", lambda: answer_batched(model, prepared, collator, batch, length)),
        "one_by_one": lambda: timed("one_by_one", lambda: answer_one_by_one(stock, raw, processor, length)),
    }
    results = common.alternate(variants, args.repeats)
    summary = common.summarise(results, baseline="one_by_one")
    single = outputs["one_by_one"]
    text = model.config.text_config
    single_text = decode_ids(processor.tokenizer, [list(a) + [text.pad_token_id] * (length - len(a)) for a in single])
    mismatches = {
        "batched": [i for i, (a, b) in enumerate(zip(outputs["batched"], single, strict=True)) if a != b],
        "planned": [i for i, (a, b) in enumerate(zip(outputs["planned"], single_text, strict=True)) if a != b],
    }
    lengths = [len(a) - 1 for a in single]  # generated tokens after [DEC]
    distinct = len(set(single))
    check = {
        "questions": len(raw),
        "identical_answers": {name: len(raw) - len(rows) for name, rows in mismatches.items()},
        "first_mismatch_rows": {name: rows[:5] for name, rows in mismatches.items()},
        "distinct_answers": distinct,
        "mean_answer_tokens": round(sum(lengths) / len(lengths), 2),
        "answers_ending_in_sep": sum(a[-1] == text.sep_token_id for a in single),
    }
    common.emit_json(
        "generation_throughput",
        {
            "quick": args.quick,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "max_answer_length": args.max_answer_length,
            "model": args.model_name_or_path
            or (f"tiny, trained {args.train_steps} steps" if args.train_steps else f"tiny, init {args.init_range}"),
            "repeats": args.repeats,
            "attn_implementation": args.attn_implementation,
            "questions_per_s": summary,
            "answers": check,
        },
    )
    ratio = "ratio_vs_one_by_one"
    common.print_table(
        f"Answering {len(raw)} questions (questions/s, median of {args.repeats}; ratio = variant/one_by_one)",
        ["variant", "batch", "median", "min", "max", "ratio", "identical"],
        [
            [
                name,
                1 if name == "one_by_one" else batch,
                s["median"],
                s["min"],
                s["max"],
                s[ratio],
                "-" if name == "one_by_one" else f"{check['identical_answers'][name]}/{len(raw)}",
            ]
            for name, s in summary.items()
        ],
    )
    print(
        f"\nOne by one: {distinct} distinct answers, {check['mean_answer_tokens']} tokens on average, "
        f"{check['answers_ending_in_sep']} ended by [SEP]"
    )
    if any(mismatches.values()):
        print(f"DIFFERENT ANSWERS (rows): {check['first_mismatch_rows']}")
        sys.exit(1)
    return {"questions_per_s": summary, "answers": check}


if __name__ == "__main__":
    main()
