"""Dataset builder throughput and memory: images/s and peak RSS of `python -m retina_vqa.build_dataset` on
multi-megapixel JPEGs, for two image counts, to show that memory does not grow with the number of images.

Images: EyePACS-like JPEGs (default 2304 x 1536, 3.5 MP, quality 95), named ``{patient}_left`` /
``{patient}_right`` with a ``trainLabels.csv``. Content: eight fundus-like templates drawn here with numpy and
Pillow (a lit disc with vignetting on a black frame, optic disc on the eye's side, macula, vessel lines, red
dots and yellow flecks by grade; not the synthetic renderer, which is slow at this size), plus per-image
sensor-like noise (a shared Gaussian field, sigma 4, rolled by a random offset per image), so no two files
are alike and the JPEG decoder does the work a camera's noisy photograph costs. Generated once per size and
count and cached under ``$RETINA_VQA_BENCH_CACHE`` (default ``$TMPDIR/retina_vqa_bench``); the smaller
count's folder holds hard links to the first images of the larger.

Each count is built by a fresh ``python -m retina_vqa.build_dataset --source eyepacs --max_image_side 1024
--num_proc N`` started by an otherwise idle wrapper process, which samples the resident memory of the whole
process tree (builder + workers, psutil, every 50 ms) and reads ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the
largest single process) and the CPU time of the builder and its workers (``RUSAGE_CHILDREN``) once it exits.
Reported per count: wall time and images/s of the whole command (imports, label reading, up-front image
check, writing, card), images/s of the writing phase alone (what the builder prints), CPU milliseconds per
image (what the work costs, independent of what else runs on the machine: on N idle cores the builder
cannot exceed N x 1000 / that many images/s), peak RSS of the tree and of the largest process, the output's
size and the machine's 1-minute load average at the end (above the core count, other work shared the cores).

    python bench/build_dataset.py                      # 200 and 800 images, --num_proc 2 (~2 min + generation)
    python bench/build_dataset.py --counts 100 400 --num_proc 4
    python bench/build_dataset.py --quick              # smoke test: 8 and 16 small images
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

TEMPLATES = 8
NOISE_SIGMA = 4.0


# ------------------------------------------------------------------------------------------------------ images


def _template(index: int, height: int):
    """A fundus-like photograph: lit disc with vignetting, optic disc on the eye's side, darker macula, vessel
    arcs, and red dots and yellow flecks in numbers that grow with the grade (``index % 5``)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(index)
    radius = height * 0.48
    yy, xx = np.mgrid[0:height, 0:height].astype(np.float32)
    r = np.hypot(xx - height / 2, yy - height / 2) / radius
    base = np.array([200, 90, 40], np.float32) * (0.9 + 0.2 * rng.random())
    pixels = base * np.clip(1.0 - 0.35 * r**2, 0, 1)[..., None] * (r < 1)[..., None]
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    side = 1 if index % 2 else -1  # right eye: disc on the right of the photograph
    disc = (height / 2 + side * 0.35 * radius, height / 2)
    macula = (height / 2 - side * 0.05 * radius, height / 2)
    d, m = 0.08 * radius, 0.12 * radius
    draw.ellipse((macula[0] - m, macula[1] - m, macula[0] + m, macula[1] + m), fill=(120, 45, 20))
    for k in range(8):
        angle = np.pi * (0.15 + 0.7 * k / 7) * (1 if k % 2 else -1)
        length = radius * (0.6 + 0.3 * rng.random())
        end = (disc[0] - side * length * abs(np.cos(angle)), disc[1] + length * np.sin(angle))
        draw.line((disc, end), fill=(110, 25, 15), width=int(radius * 0.012) + 2)
    draw.ellipse((disc[0] - d, disc[1] - d, disc[0] + d, disc[1] + d), fill=(250, 220, 150))
    grade = index % 5
    for _ in range(15 * grade):
        x, y = height / 2 + rng.normal(0, radius / 3, 2)
        s = radius * rng.uniform(0.004, 0.015)
        draw.ellipse((x - s, y - s, x + s, y + s), fill=(90, 10, 5))
    for _ in range(10 * max(0, grade - 1)):
        x, y = height / 2 + rng.normal(0, radius / 4, 2)
        s = radius * rng.uniform(0.003, 0.01)
        draw.ellipse((x - s, y - s, x + s, y + s), fill=(240, 210, 90))
    return image.filter(ImageFilter.GaussianBlur(radius=height / 1000))


_STATE: dict[str, Any] = {}


def _init_worker(width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    frames = []
    for tile in (_template(i, height) for i in range(TEMPLATES)):
        frame = Image.new("RGB", (width, height))
        frame.paste(tile, ((width - height) // 2, 0))
        frames.append(np.asarray(frame, dtype=np.int16))
    rng = np.random.default_rng(1234)
    _STATE["frames"] = frames
    _STATE["noise"] = np.rint(rng.normal(0.0, NOISE_SIGMA, (height, width, 3))).astype(np.int16)


def _write_image(task: tuple[int, str]) -> None:
    import numpy as np
    from PIL import Image

    index, path = task
    rng = np.random.default_rng(index)
    noise = np.roll(_STATE["noise"], (int(rng.integers(0, 1000)), int(rng.integers(0, 1000))), axis=(0, 1))
    pixels = np.clip(_STATE["frames"][index % TEMPLATES] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)


def eyepacs_folder(prefix: str, count: int, generate: Callable[[list[tuple[int, str]]], None]) -> Path:
    """``count`` JPEGs named as EyePACS names them (``{patient}_left`` / ``_right``) + trainLabels.csv, in the cached
    folder ``<prefix>-<count>``: ``generate`` writes the images of ``(index, path)`` tasks, unless a larger cached
    folder of the same prefix exists, whose first images are linked instead (no second copy on disk)."""
    root = common.CACHE_ROOT / f"{prefix}-{count}"
    if (root / "trainLabels.csv").exists():
        return root
    common.CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=common.CACHE_ROOT))
    images = tmp / "train"
    images.mkdir()
    names = [f"{i // 2 + 1}_{'left' if i % 2 == 0 else 'right'}" for i in range(count)]
    larger = sorted(common.CACHE_ROOT.glob(f"{prefix}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    source = next((p for p in larger if int(p.name.rsplit("-", 1)[1]) > count), None)
    if source is not None:
        for name in names:
            os.link(source / "train" / f"{name}.jpeg", images / f"{name}.jpeg")
    else:
        generate([(i, str(images / f"{name}.jpeg")) for i, name in enumerate(names)])
    with open(tmp / "trainLabels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "level"])
        writer.writerows([name, i // 2 % 5] for i, name in enumerate(names))
    os.replace(tmp, root)
    return root


def make_images(count: int, width: int, height: int, processes: int) -> Path:
    """``count`` JPEGs + trainLabels.csv in a cached folder (see the module docstring)."""

    def generate(tasks: list[tuple[int, str]]) -> None:
        print(f"  generating {count} JPEGs of {width}x{height}", file=sys.stderr, flush=True)
        with multiprocessing.get_context("fork").Pool(processes, _init_worker, (width, height)) as pool:
            for _ in pool.imap_unordered(_write_image, tasks, chunksize=8):
                pass

    return eyepacs_folder(f"build_dataset-{width}x{height}", count, generate)


def make_larger_first(counts: list[int], width: int, height: int, processes: int) -> dict[int, Path]:
    common.CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    return {count: make_images(count, width, height, processes) for count in sorted(counts, reverse=True)}


# -------------------------------------------------------------------------------------------------- measuring


def wrap(command: list[str]) -> None:
    """Run the builder; print one JSON line: wall time, its output, peak RSS of its process tree and largest process."""
    import psutil

    peak = {"tree_mb": 0.0}
    done = threading.Event()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        try:
            root = psutil.Process(process.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in tree if p.is_running())
                peak["tree_mb"] = max(peak["tree_mb"], total / 2**20)
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        sys.stderr.write(stderr[-4000:])
        sys.exit(process.returncode)
    match = re.search(r"images written at ([\d.]+) images/s", stdout)
    # CPU time of the builder and its workers (waited-for descendants count): what the work costs, whatever
    # else the machine runs at the same time.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "wall_s": wall,
                "write_images_per_s": float(match.group(1)) if match else None,
                "peak_tree_rss_mb": peak["tree_mb"],
                "peak_single_rss_mb": common.peak_rss_mb(children=True),
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "summary": stdout.strip().splitlines()[-2] if stdout.strip() else "",
            }
        )
    )


def measure(count: int, folder: Path, num_proc: int, max_image_side: int, work: Path) -> dict[str, Any]:
    output = work / f"out-{count}"
    builder = [sys.executable, "-m", "retina_vqa.build_dataset", "--source", "eyepacs"]
    builder += ["--labels", str(folder / "trainLabels.csv"), "--images", str(folder / "train")]
    builder += ["--output_dir", str(output), "--max_image_side", str(max_image_side), "--num_proc", str(num_proc)]
    builder += ["--disable_tqdm"]
    here = str(Path(__file__).resolve())
    result = subprocess.run([sys.executable, here, "--_wrap", *builder], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"build of {count} images failed:\n{result.stderr[-4000:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    input_bytes = sum(p.stat().st_size for p in (folder / "train").iterdir())
    output_bytes = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    shutil.rmtree(output)
    measured.update(
        count=count,
        images_per_s=count / measured["wall_s"],
        cpu_ms_per_image=1000 * measured["cpu_s"] / count,
        load_average_1m=os.getloadavg()[0],
        input_mb=input_bytes / 2**20,
        output_mb=output_bytes / 2**20,
    )
    print(
        f"  {count} images: {measured['wall_s']:.1f} s, {measured['images_per_s']:.1f} images/s overall, "
        f"peak RSS {measured['peak_tree_rss_mb']:.0f} MiB (tree)",
        file=sys.stderr,
        flush=True,
    )
    return measured


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 800], help="image counts (default 200 800)")
    parser.add_argument("--num_proc", type=int, default=2, help="the builder's --num_proc (default 2)")
    parser.add_argument("--max_image_side", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2304, help="JPEG width (default 2304: 3.5 MP with 1536)")
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 and 16 images of 640x480")
    args = parser.parse_args(argv)
    if args.quick:
        args.counts, args.width, args.height = [8, 16], 640, 480
    folders = make_larger_first(args.counts, args.width, args.height, max(1, args.num_proc))
    with tempfile.TemporaryDirectory(dir=common.CACHE_ROOT) as work:
        results = [measure(c, folders[c], args.num_proc, args.max_image_side, Path(work)) for c in args.counts]
    megapixels = args.width * args.height / 1e6
    common.print_table(
        f"build_dataset: {args.width}x{args.height} JPEGs ({megapixels:.1f} MP) -> --max_image_side "
        f"{args.max_image_side}, --num_proc {args.num_proc}, {os.cpu_count()} cores",
        [
            "images",
            "input MiB",
            "wall s",
            "images/s",
            "writing img/s",
            "CPU ms/img",
            "peak RSS tree MiB",
            "largest MiB",
            "out MiB",
            "load 1m",
        ],
        [
            [
                r["count"],
                r["input_mb"],
                r["wall_s"],
                r["images_per_s"],
                r["write_images_per_s"],
                r["cpu_ms_per_image"],
                r["peak_tree_rss_mb"],
                r["peak_single_rss_mb"],
                r["output_mb"],
                r["load_average_1m"],
            ]
            for r in results
        ],
    )
    payload = {
        "width": args.width,
        "height": args.height,
        "max_image_side": args.max_image_side,
        "num_proc": args.num_proc,
        "results": results,
    }
    common.emit_json("build_dataset", payload)
    return payload


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_wrap":
        wrap(sys.argv[2:])
    else:
        main()
