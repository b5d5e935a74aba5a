"""Data at EyePACS scale: disk, build and start-up of a real-sized dataset in both layouts, and the extrapolation
to EyePACS (88,702 images).

Images: ``--side`` px JPEGs (default 1024, quality 90) cut from a real fundus photograph, scikit-image's
``data.retina()`` (CC0): eight crops of 80-100% of the photograph, and per image one of them with its own colour
gains, brightness and sensor noise (a shared Gaussian field, sigma 3, rolled by a random offset), so no two files
are alike and each costs on disk what a photograph costs. Named ``{patient}_left`` / ``{patient}_right`` with a
``trainLabels.csv`` (EyePACS), generated once per count and cached under ``$RETINA_VQA_BENCH_CACHE`` (default
``$TMPDIR/retina_vqa_bench``); a smaller count's folder holds hard links to the first images of the larger.

For each image count, built by ``python -m retina_vqa.build_dataset --source eyepacs --num_proc 2`` (all seven
question types) in image rows (each image once, the default) and, for ``--question_rows_count`` images, in
question rows too (the RetinaVQA format: one image copy per question). Reported per build: wall time, images/s,
peak RSS of the builder's process tree (flat in the number of images), bytes per image on disk.

Then ``run_vqa.py`` trains the tiny model (``configs/blip-tiny``, 384 px) on each build for ``--train_steps``
steps (batch 32, two threads) and the script reads the run's output as it comes: **start-up** is the time from
the command's start to the end of the first training step (loading, expanding image rows, tokenising,
validating, building the model, one step); **training samples/s** is measured between the first and the last
logged step; then 640 validation and 640 test questions are answered (``--predict_with_generate``) and the
Trainer's evaluation and prediction samples/s are read. Image rows run twice: the second run reads the expanded
rows, the tokenised text and the validation report back from the cache (nothing is decoded or hashed again).
Finally the two layouts of ``--question_rows_count`` images run side by side, alternated (A B, B A, ...),
``--repeats`` times each, cached: medians of training, evaluation and prediction samples/s and their ratio.

EyePACS extrapolation: disk = bytes per image x 88,702; start-up = the fixed part (the cached run at the largest
count: imports, model, one step; a cached run does nothing per image) + the first run's per-image part at the
largest count measured of that layout, x 88,702; build = 88,702 / the largest build's images/s.

    python bench/dataset_scale.py                 # 5,000 and 20,000 images; question rows at 2,500 (~30 min)
    python bench/dataset_scale.py --counts 2000 8000 --question_rows_count 1000
    python bench/dataset_scale.py --quick         # smoke test: 24 and 48 images of 256 px
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import build_dataset as builder_bench  # bench/build_dataset.py: the builder wrapped with a memory sampler
import common

EYEPACS_IMAGES = 88_702
ROOT = Path(__file__).resolve().parents[1]
CROPS = 8
_STATE: dict[str, Any] = {}


# ------------------------------------------------------------------------------------------------------ images


def _init_worker(side: int) -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.retina())
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(CROPS):
        size = int(photo.width * rng.uniform(0.8, 1.0))
        left, top = (int(v) for v in rng.integers(0, photo.width - size + 1, 2))
        crop = photo.crop((left, top, left + size, top + size)).resize((side, side), Image.Resampling.BILINEAR)
        crops.append(np.asarray(crop, dtype=np.float32))
    _STATE["crops"] = crops
    _STATE["noise"] = rng.normal(0.0, 3.0, (side, side, 3)).astype(np.float32)


def _write_image(task: tuple[int, str]) -> None:
    import numpy as np
    from PIL import Image

    index, path = task
    rng = np.random.default_rng(index)
    noise = np.roll(_STATE["noise"], (int(rng.integers(0, 1000)), int(rng.integers(0, 1000))), axis=(0, 1))
    gains = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.85, 1.15)
    pixels = _STATE["crops"][index % CROPS] * gains.astype(np.float32) + noise
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def make_photos(count: int, side: int, processes: int) -> Path:
    """``count`` JPEGs + trainLabels.csv in a cached folder (see the module docstring)."""

    def generate(tasks: list[tuple[int, str]]) -> None:
        print(f"  generating {count} JPEGs of {side} px", file=sys.stderr, flush=True)
        with multiprocessing.get_context("fork").Pool(processes, _init_worker, (side,)) as pool:
            for _ in pool.imap_unordered(_write_image, tasks, chunksize=16):
                pass

    return builder_bench.eyepacs_folder(f"dataset_scale-{side}px", count, generate)


# -------------------------------------------------------------------------------------------------- measuring


def build(folder: Path, output: Path, layout: str, side: int, num_proc: int) -> dict[str, Any]:
    """The builder under bench/build_dataset.py's memory sampler: wall, images/s, peak RSS, bytes per image."""
    command = [sys.executable, "-m", "retina_vqa.build_dataset", "--source", "eyepacs", "--layout", layout]
    command += ["--labels", str(folder / "trainLabels.csv"), "--images", str(folder / "train")]
    command += ["--output_dir", str(output), "--max_image_side", str(side), "--num_proc", str(num_proc)]
    command += ["--disable_tqdm"]
    wrapper = [sys.executable, str(Path(builder_bench.__file__).resolve()), "--_wrap", *command]
    done = subprocess.run(wrapper, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"build of {folder} failed:\n{done.stderr[-4000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    count = sum(1 for _ in (folder / "train").iterdir())
    disk = sum(p.stat().st_size for p in output.rglob("data-*.arrow"))
    source = sum(p.stat().st_size for p in (folder / "train").iterdir())
    return {
        "images": count,
        "layout": layout,
        "build_wall_s": measured["wall_s"],
        "build_images_per_s": count / measured["wall_s"],
        "build_peak_rss_mb": measured["peak_tree_rss_mb"],
        "disk_bytes": disk,
        "disk_bytes_per_image": disk / count,
        "source_bytes_per_image": source / count,
    }


STEP_LINE = re.compile(r"\{'loss': ")
# The Trainer's printed metrics: "  eval_samples_per_second  =  123.4" (evaluation and prediction with generate).
SPEED_LINE = re.compile(r"^\s*(eval|predict)_samples_per_second\s*=\s*([\d.]+)")
# Validation and test questions answered per run (the first rows of each split).
EVAL_ROWS = 640


def train(dataset_dir: Path, output_dir: Path, steps: int, batch_size: int) -> dict[str, Any]:
    """run_vqa.py on the build: seconds to the end of the first training step, samples/s after it."""
    command = [sys.executable, str(ROOT / "run_vqa.py"), "--model_name_or_path", "", "--config_name"]
    command += [str(ROOT / "configs" / "blip-tiny"), "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir)]
    command += ["--do_train", "--max_steps", str(steps), "--per_device_train_batch_size", str(batch_size)]
    command += [
        "--do_eval",
        "--max_eval_samples",
        str(EVAL_ROWS),
        "--do_predict",
        "--max_predict_samples",
        str(EVAL_ROWS),
    ]
    command += ["--per_device_eval_batch_size", "64", "--predict_with_generate", "true", "--generation_max_length", "8"]
    command += ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--plot", "false"]
    command += ["--dataloader_num_workers", "0", "--disable_tqdm", "true", "--overwrite_output_dir"]
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    step_times, tail, validated, speeds = [], [], True, {}
    for line in process.stdout:
        tail = (tail + [line])[-60:]
        if STEP_LINE.search(line):
            step_times.append(time.perf_counter() - start)
        validated = validated and "Data validated before" not in line
        speed = SPEED_LINE.search(line)
        if speed:
            speeds[f"{speed.group(1)}_samples_per_s"] = float(speed.group(2))
    if process.wait() != 0 or len(step_times) < 2:
        raise RuntimeError(f"run_vqa.py on {dataset_dir} failed:\n{''.join(tail)}")
    return {
        "startup_s": step_times[0],
        "train_samples_per_s": batch_size * (len(step_times) - 1) / (step_times[-1] - step_times[0]),
        **speeds,
        "validated": validated,
    }


def compare(work: Path, count: int, repeats: int, steps: int, batch_size: int) -> dict[str, dict[str, list[float]]]:
    """Training, evaluation and prediction samples/s of the two layouts of the same images, runs alternated (A B B A
    ...) so that the machine's drift falls on both; every run reads its caches (both were run before)."""
    values: dict[str, dict[str, list[float]]] = {"image_rows": {}, "question_rows": {}}
    for repeat in range(repeats):
        order = ("image_rows", "question_rows") if repeat % 2 == 0 else ("question_rows", "image_rows")
        for layout in order:
            print(f"  side by side {repeat + 1}/{repeats}: {layout}", file=sys.stderr, flush=True)
            measured = train(work / f"{layout}-{count}", work / "run", steps, batch_size)
            for key in ("train_samples_per_s", "eval_samples_per_s", "predict_samples_per_s"):
                values[layout].setdefault(key, []).append(measured[key])
    return values if repeats else {}


def extrapolate(run: dict[str, Any], fixed_s: float, images: int) -> float:
    """Start-up seconds at ``images``: the fixed part (a run whose caches hold everything: imports, the model, one
    step) plus the first run's per-image part at the largest count measured, scaled to ``images``."""
    per_image = max(0.0, run["startup_s_first"] - fixed_s) / run["images"]
    return fixed_s + per_image * images


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 20000], help="image-row builds")
    parser.add_argument("--question_rows_count", type=int, default=2500, help="question-row build (and image rows)")
    parser.add_argument("--side", type=int, default=1024, help="JPEG side in px (default 1024)")
    parser.add_argument("--num_proc", type=int, default=2, help="the builder's --num_proc (default 2)")
    parser.add_argument("--train_steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="side-by-side runs of each layout (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 24 and 48 images of 256 px")
    args = parser.parse_args(argv)
    if args.quick:
        args.counts, args.question_rows_count, args.side, args.train_steps, args.repeats = [24, 48], 24, 256, 4, 1
    counts = sorted(set(args.counts) | {args.question_rows_count})
    folders = {c: make_photos(c, args.side, args.num_proc) for c in sorted(counts, reverse=True)}
    runs = []
    with tempfile.TemporaryDirectory(dir=common.CACHE_ROOT) as work:
        plan = [(c, "image_rows") for c in counts] + [(args.question_rows_count, "question_rows")]
        for count, layout in plan:
            output = Path(work) / f"{layout}-{count}"
            print(f"  {count} images, {layout}: building", file=sys.stderr, flush=True)
            result = build(folders[count], output, layout, args.side, args.num_proc)
            for attempt in ("first", "again") if layout == "image_rows" else ("first",):
                print(f"  {count} images, {layout}: training ({attempt} run)", file=sys.stderr, flush=True)
                measured = train(output, Path(work) / "run", args.train_steps, args.batch_size)
                result.update({f"{key}_{attempt}": value for key, value in measured.items()})
            result["load_average_1m"] = os.getloadavg()[0]
            runs.append(result)
            if count != args.question_rows_count:  # those two are compared side by side below
                shutil.rmtree(output)
            print(f"  {json.dumps(result)}", file=sys.stderr, flush=True)
        side_by_side = compare(Path(work), args.question_rows_count, args.repeats, args.train_steps, args.batch_size)
    by_layout = {layout: [r for r in runs if r["layout"] == layout] for layout in ("image_rows", "question_rows")}
    largest = max(by_layout["image_rows"], key=lambda r: r["images"])
    fixed = largest["startup_s_again"]
    question_rows = max(by_layout["question_rows"], key=lambda r: r["images"])
    eyepacs = {
        "images": EYEPACS_IMAGES,
        "image_rows_disk_gb": largest["disk_bytes_per_image"] * EYEPACS_IMAGES / 1e9,
        "question_rows_disk_gb": question_rows["disk_bytes_per_image"] * EYEPACS_IMAGES / 1e9,
        "image_rows_startup_first_min": extrapolate(largest, fixed, EYEPACS_IMAGES) / 60,
        "image_rows_startup_again_min": fixed / 60,
        "question_rows_startup_min": extrapolate(question_rows, fixed, EYEPACS_IMAGES) / 60,
        "image_rows_build_min": EYEPACS_IMAGES / largest["build_images_per_s"] / 60,
    }
    common.print_table(
        f"dataset_scale: {args.side} px photographs, 7 question types, builder --num_proc {args.num_proc}, "
        f"tiny model batch {args.batch_size}, {os.cpu_count()} cores",
        [
            "images",
            "layout",
            "build img/s",
            "peak RSS MiB",
            "disk MB/img",
            "start-up s",
            "again s",
            "train samples/s",
            "again samples/s",
            "eval samples/s",
            "predict samples/s",
        ],
        [
            [
                r["images"],
                r["layout"],
                r["build_images_per_s"],
                r["build_peak_rss_mb"],
                r["disk_bytes_per_image"] / 1e6,
                r["startup_s_first"],
                r.get("startup_s_again", "-"),
                r["train_samples_per_s_first"],
                r.get("train_samples_per_s_again", "-"),
                r.get("eval_samples_per_s_first", "-"),
                r.get("predict_samples_per_s_first", "-"),
            ]
            for r in runs
        ],
    )
    common.print_table(
        f"EyePACS ({EYEPACS_IMAGES:,} images), extrapolated",
        ["layout", "disk GB", "start-up min (first run)", "start-up min (again)"],
        [
            [
                "image_rows",
                eyepacs["image_rows_disk_gb"],
                eyepacs["image_rows_startup_first_min"],
                eyepacs["image_rows_startup_again_min"],
            ],
            ["question_rows", eyepacs["question_rows_disk_gb"], eyepacs["question_rows_startup_min"], "-"],
        ],
    )
    if side_by_side:
        medians = {name: {k: common.median(v) for k, v in values.items()} for name, values in side_by_side.items()}
        common.print_table(
            f"Side by side, {args.question_rows_count} images, cached runs alternated ABBA, {args.repeats} repeats: "
            "medians (image rows / question rows)",
            ["measure", "image_rows", "question_rows", "ratio"],
            [
                [
                    k,
                    medians["image_rows"][k],
                    medians["question_rows"][k],
                    medians["image_rows"][k] / medians["question_rows"][k],
                ]
                for k in medians["image_rows"]
            ],
        )
    payload = {
        "side": args.side,
        "num_proc": args.num_proc,
        "runs": runs,
        "side_by_side": side_by_side,
        "eyepacs": eyepacs,
    }
    common.emit_json("dataset_scale", payload)
    return payload


if __name__ == "__main__":
    main()
