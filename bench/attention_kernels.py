"""Fused attention (SDPA) against transformers' eager BLIP attention: training-step time, same weights, same batch.

For each model size and image size, two copies of the recipe's model (`models.loading.load_model`, shared images,
token-normalised loss) with identical weights, one with ``--attn_implementation sdpa`` and one with
``eager``, take alternately a forward + backward pass on the same collated batch of synthetic RetinaVQA
(questions and answers padded as in training). Reports the median time per step, samples/s, the ratio, and
the largest difference between the two losses and gradients (the test suite bounds it at 1e-4 on the tiny
model in fp32).

    python bench/attention_kernels.py                      # tiny at 128 and 384 px, full size at 128 and 384 px
    python bench/attention_kernels.py --sizes tiny --quick # smoke test
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any

import common
import torch


def train_step(model, batch) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    tokens = int((batch["labels"] != -100).sum())
    model(**batch, num_items_in_batch=tokens).loss.backward()
    return time.perf_counter() - start


def bench_case(size: str, image_size: int, batch_size: int, repeats: int) -> dict[str, Any]:
    from retina_vqa.data.preprocessing import prepare_split
    from retina_vqa.models.attention import set_attention_implementation

    dataset_dir = common.synthetic_dataset(max(8, batch_size // 13 + 2), 4, image_size)
    processor = common.load_processor(image_size)
    dargs = common.data_args(dataset_dir)
    prepared = prepare_split(common.load_split(dataset_dir, "train"), processor.tokenizer, dargs, True, "train")
    batch = common.recipe_collator(processor, dargs)([prepared[i] for i in range(batch_size)])

    fused = common.recipe_model(size, image_size, processor).train()
    set_attention_implementation(fused, "sdpa")
    eager = copy.deepcopy(fused)
    set_attention_implementation(eager, "eager")
    print(
        f"[{size} {image_size} px] batch {batch_size} questions / {batch['pixel_values'].shape[0]} images, "
        f"question {batch['input_ids'].shape[1]} / answer {batch['decoder_input_ids'].shape[1]} tokens",
        file=sys.stderr,
        flush=True,
    )
    for model in (fused, eager):  # warm-up (allocator, kernels)
        train_step(model, batch)
    times: dict[str, list[float]] = {"sdpa": [], "eager": []}
    for repeat in range(repeats):
        order = ("sdpa", "eager") if repeat % 2 == 0 else ("eager", "sdpa")
        for name in order:
            times[name].append(train_step(fused if name == "sdpa" else eager, batch))
    grads = {n: p.grad for n, p in fused.named_parameters()}
    worst_grad = max((p.grad - grads[n]).abs().max().item() for n, p in eager.named_parameters())
    with torch.no_grad():
        losses = [m(**batch).loss.item() for m in (fused, eager)]
    per_s = {name: [batch_size / t for t in values] for name, values in times.items()}
    return {
        "size": size,
        "image_size": image_size,
        "batch_size": batch_size,
        "images_in_batch": int(batch["pixel_values"].shape[0]),
        "repeats": repeats,
        "samples_per_s": common.summarise(per_s, baseline="eager"),
        "max_abs_loss_diff": abs(losses[0] - losses[1]),
        "max_abs_grad_diff": worst_grad,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,full")
    parser.add_argument("--image_sizes", default="128,384")
    parser.add_argument("--tiny_batch_size", type=int, default=64)
    parser.add_argument("--full_batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny at 128 px, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.image_sizes, args.repeats = "tiny", "128", 2
    common.quiet()
    batch_sizes = {"tiny": args.tiny_batch_size, "full": args.full_batch_size}
    cases = [
        bench_case(size, int(image_size), batch_sizes[size], args.repeats)
        for size in args.sizes.split(",")
        for image_size in args.image_sizes.split(",")
    ]
    common.emit_json("attention_kernels", {"quick": args.quick, "results": cases})
    common.print_table(
        f"Training step (forward + backward) samples/s, median of {args.repeats}; ratio = sdpa/eager",
        ["model", "px", "batch", "images", "sdpa", "eager", "ratio", "loss diff", "max grad diff"],
        [
            [
                c["size"],
                c["image_size"],
                c["batch_size"],
                c["images_in_batch"],
                c["samples_per_s"]["sdpa"]["median"],
                c["samples_per_s"]["eager"]["median"],
                c["samples_per_s"]["sdpa"]["ratio_vs_eager"],
                f"{c['max_abs_loss_diff']:.1e}",
                f"{c['max_abs_grad_diff']:.1e}",
            ]
            for c in cases
        ],
    )
    return {"results": cases}


if __name__ == "__main__":
    main()
