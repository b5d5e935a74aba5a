"""Peak memory of a short training run, and the disk the recipe's tokenisation cache takes per example.

Memory: each run (recipe: prepare_split + VqaCollator + VqaTrainer, fused attention; recipe_eager: the same
with transformers' eager attention; notebook: per-item processor Dataset + AdamW loop; see
train_throughput.py) happens in a fresh child process, started by a small wrapper process
that reads ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` once the child has exited: the peak resident
memory of exactly that run (imports, data, model, optimizer state, activations), nothing else.

Disk: the saved training split is copied to a temporary folder, ``data.preprocessing.prepare_split`` runs on it as in
run_vqa.py, and the ``cache-*.arrow`` files its ``datasets.map`` calls write next to the split are
measured, per example, against the encoded image bytes per example. The images stay encoded (PNG bytes),
so the cache must be about the size of the raw data, far from the float pixels (3 x H x W x 4 bytes) a
map over ``pixel_values`` would store.

    python bench/memory_disk.py            # tiny and full-size at 128 px, recipe and notebook
    python bench/memory_disk.py --quick    # smoke test: tiny, 3 steps
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common


def child(variant: str, size: str, steps: int, batch_size: int, image_size: int, dataset_dir: str) -> None:
    """One short training run; prints its own peak RSS for cross-checking."""
    import train_throughput

    from retina_vqa.data.preprocessing import prepare_split

    common.quiet()
    raw = common.load_split(Path(dataset_dir), "train")
    processor = common.load_processor(image_size)
    if variant in ("recipe", "recipe_eager"):
        from retina_vqa.models.attention import set_attention_implementation

        dargs = common.data_args(dataset_dir)
        prepared = prepare_split(raw, processor.tokenizer, dargs, with_answers=True, description="train")
        model = common.recipe_model(size, image_size, processor)
        set_attention_implementation(model, "eager" if variant == "recipe_eager" else "sdpa")
        collator = common.recipe_collator(processor, dargs)
        train_throughput.run_recipe(model, prepared, processor, collator, batch_size, steps, 0, True, 0)
    elif variant == "notebook":
        model = common.plain_model(size, image_size, processor)
        train_throughput.run_notebook(model, raw, processor, batch_size, steps, 0, 0)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    print(json.dumps({"self_peak_rss_mb": common.peak_rss_mb()}))


def wrap(command: list[str]) -> None:
    """Run the child and report the peak RSS of the children of this (otherwise idle) process."""
    common.report_child_peak_rss(command)


def measure_memory(variant: str, size: str, steps: int, batch_size: int, image_size: int, dataset_dir: Path):
    here = str(Path(__file__).resolve())
    child_cmd = [sys.executable, here, "--_child", variant, size, str(steps), str(batch_size), str(image_size)]
    child_cmd.append(str(dataset_dir))
    out = subprocess.run([sys.executable, here, "--_wrap", *child_cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{variant}/{size} run failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {size} {variant}: peak RSS {result['peak_rss_mb']:.0f} MiB", file=sys.stderr, flush=True)
    return result


def measure_disk(dataset_dir: Path, image_size: int) -> dict[str, Any]:
    from datasets import Image, load_from_disk

    from retina_vqa.data.preprocessing import prepare_split

    processor = common.load_processor(image_size)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "data"
        shutil.copytree(dataset_dir, copy, ignore=shutil.ignore_patterns("cache-*"))  # no earlier caches
        split_dir = copy / "train"
        raw = load_from_disk(str(copy))["train"]
        before = set(split_dir.glob("cache-*.arrow"))
        prepared = prepare_split(raw, processor.tokenizer, common.data_args(copy), with_answers=True, description="t")
        caches = sorted(set(split_dir.glob("cache-*.arrow")) - before, key=lambda p: p.stat().st_mtime)
        cache_bytes = [p.stat().st_size for p in caches]
        images = raw.cast_column("image", Image(decode=False))["image"]
        image_bytes = sum(len(value["bytes"]) for value in images)
        saved_bytes = sum(p.stat().st_size for p in split_dir.glob("data-*.arrow"))
        rows = len(raw)
        in_cache = [f.get("filename", "") for f in prepared.cache_files]
    per_example = sum(cache_bytes) / rows
    raw_per_example = image_bytes / rows
    return {
        "rows": rows,
        "image_size": image_size,
        "cache_files": len(cache_bytes),
        "cache_bytes_per_file": cache_bytes,
        "cache_bytes_per_example": round(per_example, 1),
        "last_cache_bytes_per_example": round(cache_bytes[-1] / rows, 1) if cache_bytes else 0.0,
        "raw_image_bytes_per_example": round(raw_per_example, 1),
        "saved_split_bytes_per_example": round(saved_bytes / rows, 1),
        "cache_vs_raw_images": round(per_example / raw_per_example, 3),
        "float_pixel_bytes_per_example": 3 * image_size * image_size * 4,
        "prepared_split_reads": [Path(name).name for name in in_cache],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,full")
    parser.add_argument("--variants", default="recipe,recipe_eager,notebook", help="recipe_eager: eager attention")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--tiny_steps", type=int, default=10)
    parser.add_argument("--tiny_batch_size", type=int, default=32)
    parser.add_argument("--full_steps", type=int, default=3)
    parser.add_argument("--full_batch_size", type=int, default=8)
    parser.add_argument("--num_train_images", type=int, default=32, help="13 rows each")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny, 3 steps of 8")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.tiny_steps, args.tiny_batch_size, args.num_train_images = "tiny", 3, 8, 8
    common.quiet()

    dataset_dir = common.synthetic_dataset(args.num_train_images, 4, args.image_size)
    configs = {"tiny": (args.tiny_steps, args.tiny_batch_size), "full": (args.full_steps, args.full_batch_size)}
    memory = []
    for size in args.sizes.split(","):
        steps, batch_size = configs[size]
        for variant in args.variants.split(","):
            result = measure_memory(variant, size, steps, batch_size, args.image_size, dataset_dir)
            memory.append({"size": size, "variant": variant, "steps": steps, "batch_size": batch_size, **result})
    disk = measure_disk(dataset_dir, args.image_size)

    common.emit_json("memory_disk", {"quick": args.quick, "memory": memory, "disk": disk})
    common.print_table(
        f"Peak RSS of a short training run at {args.image_size} px (MiB, one fresh process per run)",
        ["model", "variant", "batch", "steps", "peak RSS (children)", "peak RSS (self-reported)"],
        [
            [m["size"], m["variant"], m["batch_size"], m["steps"], m["peak_rss_mb"], m["self_peak_rss_mb"]]
            for m in memory
        ],
    )
    common.print_table(
        f"datasets cache of prepare_split, {disk['rows']} rows at {args.image_size} px (bytes per example)",
        ["what", "bytes/example"],
        [
            ["raw image bytes (PNG)", disk["raw_image_bytes_per_example"]],
            ["saved split (all columns)", disk["saved_split_bytes_per_example"]],
            [f"map caches, {disk['cache_files']} files", disk["cache_bytes_per_example"]],
            ["last map cache (read by the Trainer)", disk["last_cache_bytes_per_example"]],
            ["float pixels, for comparison", disk["float_pixel_bytes_per_example"]],
            ["map caches / raw image bytes", disk["cache_vs_raw_images"]],
        ],
    )
    return {"memory": memory, "disk": disk}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_wrap":
        wrap(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--_child":
        variant, size, steps, batch_size, image_size, dataset_dir = sys.argv[2:8]
        child(variant, size, int(steps), int(batch_size), int(image_size), dataset_dir)
    else:
        main()
