"""Data preparation throughput (no model): the notebook's per-item processor calls against the recipe's collator.

Variants, run alternately in one process for each image size and DataLoader worker count:

* ``notebook``: the usual notebook Dataset (``common.NotebookVqaDataset``): per item, the decoded PIL image
  and the question go through ``processor(..., padding="max_length", max_length=32)``, the answer through
  the tokenizer; a shuffled DataLoader stacks the items;
* ``recipe``: the split tokenised once by ``data.preprocessing.prepare_split`` (datasets.map, not timed: it is cached on
  disk and done once per run), ``ImageGroupedSampler`` and ``VqaCollator``: images decoded and processed
  per batch in one image-processor call, dynamic padding, each distinct image of a batch once, decoded images
  kept for the image's later batches (`data.image_cache`: empty at the start of every run; the timed batches are
  about one epoch);
* ``recipe_random``: the same collator in random order (batches rarely share an image), separating the
  image-sharing gain from batching.

Throughput is samples (question + image, ready for the model) per second over ``--batches`` batches after
one untimed batch (which also absorbs the start of the worker processes). The raw images are synthetic
PNGs at the target size, so resizing is cheap here; photographs of 1-3k px make every variant slower.
The image processor uses the PIL backend: torchvision is not installed, so transformers' fast (torch)
image processors are not available and both sides use the same slow BlipImageProcessor.

    python bench/data_pipeline.py            # 128 and 384 px, 0 and 2 workers
    python bench/data_pipeline.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import common


def throughput(loader, batches: int) -> tuple[float, float]:
    """(samples/s, pixel tensors per sample) over ``batches`` batches after one untimed batch."""
    stream = itertools.chain.from_iterable(itertools.repeat(loader))  # cycles when the split is short
    next(stream)
    samples = images = 0
    start = time.perf_counter()
    for batch in itertools.islice(stream, batches):
        samples += batch["input_ids"].shape[0]
        images += batch["pixel_values"].shape[0]
    seconds = time.perf_counter() - start
    del stream
    return samples / seconds, images / samples


def bench_setting(image_size: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    from retina_vqa.data.preprocessing import prepare_split

    dataset_dir = common.synthetic_dataset(args.num_train_images, 4, image_size)
    raw = common.load_split(dataset_dir, "train")
    processor = common.load_processor(image_size)
    dargs = common.data_args(dataset_dir)
    prepared = prepare_split(raw, processor.tokenizer, dargs, with_answers=True, description="train")
    collator = common.recipe_collator(processor, dargs, workers, image_cache=True)
    images_per_sample: dict[str, float] = {}

    def measure(name: str, loader) -> float:
        rate, per_sample = throughput(loader, args.batches)
        images_per_sample[name] = round(per_sample, 3)
        return rate

    bs = args.batch_size
    variants = {
        "recipe": lambda: measure(
            "recipe",
            common.recipe_loader(prepared, common.fresh_image_cache(collator), bs, workers, group_by_image=True),
        ),
        "notebook": lambda: measure("notebook", common.notebook_loader(raw, processor, bs, workers)),
        "recipe_random": lambda: measure(
            "recipe_random",
            common.recipe_loader(prepared, common.fresh_image_cache(collator), bs, workers, group_by_image=False),
        ),
    }
    print(f"[{image_size} px, {workers} workers] {len(raw)} rows", flush=True, file=sys.stderr)
    results = common.alternate(variants, args.repeats)
    return {
        "image_size": image_size,
        "num_workers": workers,
        "batch_size": bs,
        "batches": args.batches,
        "repeats": args.repeats,
        "samples_per_s": common.summarise(results, baseline="notebook"),
        "pixel_tensors_per_sample": images_per_sample,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_sizes", default="128,384")
    parser.add_argument("--num_workers", default="0,2", help="DataLoader worker counts, comma-separated")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_train_images", type=int, default=32, help="13 rows each")
    parser.add_argument("--quick", action="store_true", help="smoke test: 128 px, 0 workers, 3 batches, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_sizes, args.num_workers, args.batches, args.repeats, args.num_train_images = "128", "0", 3, 1, 8
    common.quiet()

    settings = [
        bench_setting(int(size), int(workers), args)
        for size in args.image_sizes.split(",")
        for workers in args.num_workers.split(",")
    ]
    common.emit_json(
        "data_pipeline", {"quick": args.quick, "image_backend": "PIL (no torchvision)", "results": settings}
    )
    rows = [
        [
            s["image_size"],
            s["num_workers"],
            name,
            stats["median"],
            stats["min"],
            stats["max"],
            stats["ratio_vs_notebook"],
            s["pixel_tensors_per_sample"][name],
        ]
        for s in settings
        for name, stats in s["samples_per_s"].items()
    ]
    common.print_table(
        f"Data preparation, batch {args.batch_size} (samples/s, median of {args.repeats}; ratio = variant/notebook)",
        ["px", "workers", "variant", "median", "min", "max", "ratio", "images/sample"],
        rows,
    )
    return {"results": settings}


if __name__ == "__main__":
    main()
