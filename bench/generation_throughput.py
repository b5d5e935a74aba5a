"""Answering throughput: the recipe's batched masked generation against one ``model.generate`` per question.

Variants, run alternately in one process over the same test split and the same model:

* ``batched``: the test split tokenised by ``data.prepare_split`` and batched by ``VqaCollator`` (``--batch_size``
  questions, each distinct image once), answered by ``generation.generate_answers`` (the real question
  mask, ``image_index``), greedy;
* ``one_by_one``: per question, ``processor(images=image, text=question, return_tensors="pt")`` and
  transformers' own ``model.generate`` with batch 1, greedy, the same answer length.

One at a time there is no padding, so the masked batched answers must be identical token for token: the
benchmark compares every answer and reports the mismatches (target: none). The model is a random tiny BLIP
with a wide initialisation (``initializer_range`` 0.5, as tests/conftest.py ``make_tiny_model``), whose
answers vary with image and question; the cross-attention mask fix is applied as ``modeling.load_model``
does. Collation and processor calls are inside the timing for both sides.

    python bench/generation_throughput.py            # 16 test images x 13 questions, batch 32
    python bench/generation_throughput.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import common
import torch


def make_model(processor, init_range: float, seed: int):
    """The tiny BLIP with a wide random init (answers vary), mask fix on, answer settings as run_vqa.py saves."""
    from transformers import AutoConfig, BlipForQuestionAnswering

    from retina_vqa.attention import apply_cross_attention_mask_fix

    config = AutoConfig.from_pretrained(common.TINY_CONFIG)
    config.text_config.initializer_range = init_range
    config.vision_config.initializer_range = init_range
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config).eval()
    apply_cross_attention_mask_fix(model)
    return model


def train_model(processor, dataset_dir, steps: int, batch_size: int, seed: int):
    """The recipe's tiny model after ``steps`` AdamW steps (lr 1e-3) on the training split."""
    from retina_vqa.data import prepare_split

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
    from retina_vqa.generation import generate_answers

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
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 test images, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_test_images, args.repeats, args.num_train_images = 2, 1, 4
    common.quiet()
    from retina_vqa.data import prepare_split
    from retina_vqa.generation import configure_answer_generation

    dataset_dir = common.synthetic_dataset(args.num_train_images, args.num_test_images, args.image_size)
    raw = common.load_split(dataset_dir, "test")
    processor = common.load_processor(args.image_size)
    dargs = common.data_args(dataset_dir)
    prepared = prepare_split(raw, processor.tokenizer, dargs, with_answers=False, description="test")
    collator = common.recipe_collator(processor, dargs)
    if args.model_name_or_path:
        from retina_vqa.predict import load_for_inference

        model, processor = load_for_inference(args.model_name_or_path, device="cpu")
        prepared = prepare_split(raw, processor.tokenizer, dargs, with_answers=False, description="test")
        collator = common.recipe_collator(processor, dargs)
    elif args.train_steps > 0:
        model = train_model(processor, dataset_dir, args.train_steps, 32, seed=0)
    else:
        model = make_model(processor, args.init_range, seed=0)
    configure_answer_generation(model, args.max_answer_length)
    print(f"{len(raw)} questions about {args.num_test_images} images, batch {args.batch_size}", file=sys.stderr)

    outputs: dict[str, list[tuple[int, ...]]] = {}

    def timed(name: str, fn) -> float:
        start = time.perf_counter()
        outputs[name] = fn()
        return len(raw) / (time.perf_counter() - start)

    variants = {
        "batched": lambda: timed(
            "batched", lambda: answer_batched(model, prepared, collator, args.batch_size, args.max_answer_length)
        ),
        "one_by_one": lambda: timed(
            "one_by_one", lambda: answer_one_by_one(model, raw, processor, args.max_answer_length)
        ),
    }
    results = common.alternate(variants, args.repeats)
    summary = common.summarise(results, baseline="one_by_one")
    batched, single = outputs["batched"], outputs["one_by_one"]
    mismatches = [i for i, (a, b) in enumerate(zip(batched, single, strict=True)) if a != b]
    lengths = [len(a) - 1 for a in single]  # generated tokens after [DEC]
    distinct = len(set(single))
    check = {
        "questions": len(raw),
        "identical_answers": len(raw) - len(mismatches),
        "mismatches": len(mismatches),
        "first_mismatch_rows": mismatches[:5],
        "distinct_answers": distinct,
        "mean_answer_tokens": round(sum(lengths) / len(lengths), 2),
        "answers_ending_in_sep": sum(a[-1] == model.config.text_config.sep_token_id for a in single),
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
            "questions_per_s": summary,
            "answers": check,
        },
    )
    ratio = "ratio_vs_one_by_one"
    common.print_table(
        f"Answering {len(raw)} questions (questions/s, median of {args.repeats}; ratio = variant/one_by_one)",
        ["variant", "batch", "median", "min", "max", "ratio"],
        [
            [name, args.batch_size if name == "batched" else 1, s["median"], s["min"], s["max"], s[ratio]]
            for name, s in summary.items()
        ],
    )
    verdict = "IDENTICAL" if not mismatches else f"{len(mismatches)} DIFFER (rows {mismatches[:5]})"
    print(
        f"\nAnswers batched vs one by one: {verdict}; {distinct} distinct answers, "
        f"{check['mean_answer_tokens']} tokens on average, {check['answers_ending_in_sep']} ended by [SEP]"
    )
    if mismatches:
        sys.exit(1)
    return {"questions_per_s": summary, "answers": check}


if __name__ == "__main__":
    main()
