"""Training throughput: the recipe's Trainer path against the usual notebook loop, same model, data and batch.

Variants, run alternately in one process (A B C, C B A, ...):

* ``recipe`` (A): the split tokenised once with ``data.preprocessing.prepare_split`` (datasets.map), ``VqaCollator``
  (images decoded per batch, dynamic padding, one ``pixel_values`` entry per distinct image), the real
  ``VqaTrainer`` with ``VqaTrainingArguments`` (``group_by_image`` on, as by default) and the model of
  ``models.loading.load_model`` (``SharedImageBlipForQuestionAnswering``);
* ``notebook`` (B): a torch Dataset calling the processor per item (``padding="max_length"``, 32 tokens),
  padded answer ids as labels, a shuffled DataLoader, a plain AdamW loop on a plain
  ``BlipForQuestionAnswering`` (``model(input_ids=..., pixel_values=..., labels=...)``);
* ``recipe_random`` (C): the recipe with ``group_by_image=False`` (random order: batches rarely share an
  image), which separates the image-sharing gain from the rest of the pipeline;
* ``recipe_kK`` (with ``--questions_per_image K ...``): the recipe with ``--max_questions_per_image K`` (0: every
  question of an image in one run, the grouping before the bound);
* ``recipe_patchdropR`` (with ``--patch_dropout R ...``): the recipe with ``--patch_dropout R`` (the image
  encoder trains on ``1 - R`` of each image's patches);
* ``recipe_repeated_keys`` (with ``--repeated_image_keys``): the recipe with the question encoder's
  cross-attention projecting an image's keys and values once per question instead of once per distinct image
  (what it did before ``models.attention.shared_encoder_rows``);
* ``recipe_uncached`` (with ``--uncached_images``): the recipe with ``--decoded_image_cache_gb 0``, every batch
  decoding its images (the cache of decoded images, `data.image_cache`, starts empty in every other recipe run: the
  timed steps are about one epoch, in which an image's first batch decodes it and its later ones reuse it);
* ``recipe_eager`` (with ``--eager_attention``): the recipe with transformers' eager attention instead of the
  fused (SDPA) default;
* ``recipe_frozen`` and ``recipe_frozen_cached`` (with ``--frozen_vision``): the recipe with the image encoder
  frozen, without and with the cache of its outputs (a fresh cache per run: its first epoch encodes every
  image; use few ``--num_train_images`` so that the steps span several epochs);
* ``recipe_compiled`` (with ``--torch_compile``): the recipe with ``--torch_compile`` (inductor); its first
  step compiles and is left out of the timing with the other warm-up steps.

Throughput is training samples (questions) per second over the steps after the first ``--warmup_steps``
(the first step allocates the optimizer state and warms the allocator), timed by a callback / the loop
itself: model building, Trainer construction and data loading set-up are excluded for every variant.

    python bench/train_throughput.py    # demo's tiny BLIP (128 px, its batch) + blip-vqa-base (384 px, batch 8)
    python bench/train_throughput.py --sizes tiny --eager_attention --torch_compile
    python bench/train_throughput.py --sizes tiny --image_size 384 --frozen_vision --num_train_images 16 \\
        --no_random_order
    python bench/train_throughput.py --sizes full --no_random_order --repeated_image_keys
    python bench/train_throughput.py --quick    # smoke test: tiny only, 3 steps, 1 repeat
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import math
import sys
import time
from typing import Any

import common
import torch
from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Wall time at the end of each optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.times = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def timed_throughput(times: list[float], warmup_steps: int, batch_size: int) -> float:
    """Samples/s over the steps after ``warmup_steps`` (``times[0]`` is the start, ``times[i]`` the end of step i)."""
    steps = len(times) - 1 - warmup_steps
    if steps < 1:
        raise ValueError(f"need more steps than --warmup_steps {warmup_steps}, got {len(times) - 1}")
    return steps * batch_size / (times[-1] - times[warmup_steps])


def run_recipe(
    model,
    prepared,
    processor,
    collator,
    batch_size: int,
    steps: int,
    warmup: int,
    group: bool,
    workers,
    compile=False,
    cache=None,
    questions_per_image=None,
    patch_dropout=0.0,
    repeated_keys=False,
):
    clock = StepClock()
    if patch_dropout:
        from retina_vqa.training.patch_dropout import attach_patch_dropout

        attach_patch_dropout(model, patch_dropout)
    keys = common.repeated_image_keys() if repeated_keys else contextlib.nullcontext()
    with keys:
        result = common.train_recipe(
            model,
            prepared,
            processor,
            common.fresh_image_cache(collator),
            clock,
            image_embedding_cache=cache,
            overwrite_output_dir=True,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=1e-4,
            warmup_steps=0,
            dataloader_num_workers=workers,
            group_by_image=group,
            **({} if questions_per_image is None else {"max_questions_per_image": questions_per_image}),
            torch_compile=compile,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
    if patch_dropout:
        from retina_vqa.training.patch_dropout import detach_patch_dropout

        detach_patch_dropout(model)
    gc.collect()
    if not math.isfinite(result.training_loss):
        raise FloatingPointError("recipe training loss is not finite")
    return timed_throughput(clock.times, warmup, batch_size)


def run_notebook(model, raw_split, processor, batch_size: int, steps: int, warmup: int, workers: int) -> float:
    """The notebook's loop, as written there (plus the step clock)."""
    device = next(model.parameters()).device
    loader = common.notebook_loader(raw_split, processor, batch_size, num_workers=workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = [time.perf_counter()]
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # more epochs if the split is short
    for batch in itertools.islice(batches, steps):
        input_ids = batch.pop("input_ids").to(device)
        pixel_values = batch.pop("pixel_values").to(device)
        labels = batch.pop("labels").to(device)
        outputs = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
        loss = outputs.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter())
    if not math.isfinite(loss.item()):
        raise FloatingPointError("notebook training loss is not finite")
    del optimizer
    gc.collect()
    return timed_throughput(times, warmup, batch_size)


def bench_size(size: str, args: argparse.Namespace, batch_size: int, steps: int) -> dict[str, Any]:
    from retina_vqa.data.preprocessing import prepare_split

    image_size = args.image_size or common.DEFAULT_IMAGE_SIZE[size]
    rows_needed = batch_size * steps
    images = args.num_train_images or max(8, -(-rows_needed // 13) + 1)
    dataset_dir = common.synthetic_dataset(images, args.num_test_images, image_size)
    raw_train = common.load_split(dataset_dir, "train")
    processor = common.load_processor(image_size)
    dargs = common.data_args(dataset_dir)
    prepared = prepare_split(raw_train, processor.tokenizer, dargs, with_answers=True, description="train")
    collator = common.recipe_collator(processor, dargs, args.num_workers, image_cache=True)

    models = {
        "recipe": common.recipe_model(size, image_size, processor),
        "notebook": common.plain_model(size, image_size, processor),
    }
    n_params = common.count_parameters(models["recipe"])
    print(
        f"[{size}] {n_params / 1e6:.1f}M parameters, {image_size} px, batch {batch_size}, {steps} steps "
        f"({args.warmup_steps} untimed), {len(raw_train)} training rows of {images} images",
        file=sys.stderr,
        flush=True,
    )

    def recipe(model_name: str, group: bool = True, **options):
        """A variant: the recipe's Trainer on ``models[model_name]`` (options: collator, compile, cache)."""
        data_collator = options.pop("collator", collator)
        return lambda: run_recipe(
            models[model_name],
            prepared,
            processor,
            data_collator,
            batch_size,
            steps,
            args.warmup_steps,
            group,
            args.num_workers,
            **{k: v() if callable(v) else v for k, v in options.items()},
        )

    variants = {
        "recipe": recipe("recipe"),
        "notebook": lambda: run_notebook(
            models["notebook"], raw_train, processor, batch_size, steps, args.warmup_steps, args.num_workers
        ),
    }
    if not args.no_random_order:
        variants["recipe_random"] = recipe("recipe", group=False)
    for bound in args.questions_per_image or ():
        # Image grouping with runs of at most `bound` questions of an image (0: all of them together).
        variants[f"recipe_k{bound}"] = recipe("recipe", questions_per_image=bound)
    for rate in args.patch_dropout or ():
        variants[f"recipe_patchdrop{rate:g}"] = recipe("recipe", patch_dropout=rate)
    if args.repeated_image_keys:
        variants["recipe_repeated_keys"] = recipe("recipe", repeated_keys=True)
    if args.uncached_images:
        import dataclasses

        variants["recipe_uncached"] = recipe("recipe", collator=dataclasses.replace(collator, image_cache=None))
    if args.eager_attention:
        from retina_vqa.models.attention import set_attention_implementation

        models["eager"] = common.recipe_model(size, image_size, processor)
        set_attention_implementation(models["eager"], "eager")
        variants["recipe_eager"] = recipe("eager")
    if args.frozen_vision:
        import dataclasses

        from retina_vqa.models.blip import freeze
        from retina_vqa.training.embedding_cache import ImageEmbeddingCache

        for name in ("frozen", "frozen_cached"):
            models[name] = common.recipe_model(size, image_size, processor)
            freeze(models[name], vision_model=True)
        variants["recipe_frozen"] = recipe("frozen")
        # A new cache for every run: the first epoch encodes every image, later epochs reuse them.
        variants["recipe_frozen_cached"] = recipe(
            "frozen_cached",
            collator=dataclasses.replace(collator, return_image_keys=True),
            cache=lambda: ImageEmbeddingCache(8 * 10**9),
        )
    if args.torch_compile:
        # The first step compiles (excluded from the timing by --warmup_steps); every later batch shape reuses it.
        models["compiled"] = common.recipe_model(size, image_size, processor)
        variants["recipe_compiled"] = recipe("compiled", compile=True)
    results = common.alternate(variants, args.repeats)
    models.clear()  # frees the full-size models before the next size
    gc.collect()
    return {
        "size": size,
        "parameters": n_params,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "timed_steps": steps - args.warmup_steps,
        "repeats": args.repeats,
        "num_workers": args.num_workers,
        "samples_per_s": common.summarise(results, baseline="notebook"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,full", help="comma-separated: tiny (configs/blip-tiny), full")
    parser.add_argument(
        "--image_size", type=int, default=None, help="default: each size at its own (tiny 128 px, full 384 px)"
    )
    parser.add_argument(
        "--tiny_batch_size",
        type=int,
        default=common.demo_setting("per_device_train_batch_size"),
        help="default: the demo's (configs/demo.yaml)",
    )
    parser.add_argument("--tiny_steps", type=int, default=21)
    parser.add_argument("--full_batch_size", type=int, default=8)
    parser.add_argument("--full_steps", type=int, default=3)
    parser.add_argument("--warmup_steps", type=int, default=1, help="first steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers, for every variant")
    parser.add_argument("--num_train_images", type=int, default=None, help="default: enough for the steps")
    parser.add_argument("--num_test_images", type=int, default=4)
    parser.add_argument("--no_random_order", action="store_true", help="skip variant C (group_by_image false)")
    parser.add_argument(
        "--questions_per_image",
        type=int,
        nargs="+",
        help="also the recipe with --max_questions_per_image K for each K (0: all questions of an image together)",
    )
    parser.add_argument(
        "--patch_dropout",
        type=float,
        nargs="+",
        help="also the recipe with --patch_dropout R for each R (the fraction of each image's patches dropped)",
    )
    parser.add_argument(
        "--repeated_image_keys",
        action="store_true",
        help="add variant recipe_repeated_keys (the question encoder projects keys and values once per question)",
    )
    parser.add_argument(
        "--uncached_images",
        action="store_true",
        help="add variant recipe_uncached (--decoded_image_cache_gb 0: every batch decodes its images)",
    )
    parser.add_argument(
        "--eager_attention", action="store_true", help="add variant recipe_eager (--attn_implementation eager)"
    )
    parser.add_argument(
        "--frozen_vision",
        action="store_true",
        help="add variants recipe_frozen (--freeze_vision_encoder), recipe_frozen_cached (+ --cache_image_embeddings)",
    )
    parser.add_argument(
        "--torch_compile", action="store_true", help="add variant recipe_compiled (--torch_compile, inductor)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny, batch 8, 3 steps, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.tiny_batch_size, args.tiny_steps, args.repeats = "tiny", 8, 3, 1
    common.quiet()

    configs = {"tiny": (args.tiny_batch_size, args.tiny_steps), "full": (args.full_batch_size, args.full_steps)}
    per_size = [bench_size(size, args, *configs[size]) for size in args.sizes.split(",") if size]

    common.emit_json("train_throughput", {"quick": args.quick, "results": per_size})
    rows = []
    for entry in per_size:
        for name, stats in entry["samples_per_s"].items():
            rows.append(
                [
                    entry["size"],
                    entry["image_size"],
                    name,
                    entry["batch_size"],
                    entry["timed_steps"],
                    stats["median"],
                    stats["min"],
                    stats["max"],
                    stats["ratio_vs_notebook"],
                ]
            )
    common.print_table(
        f"Training throughput (samples/s, median of {args.repeats}; ratio = variant/notebook)",
        ["model", "px", "variant", "batch", "timed steps", "median", "min", "max", "ratio"],
        rows,
    )
    return {"results": per_size}


if __name__ == "__main__":
    main()
