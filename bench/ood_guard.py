"""Out-of-distribution guard: does it tell held-out fundus photographs from pictures that are not fundus photographs?

Fits the guard (`retina_vqa.ood`: Mahalanobis distance on the image encoder's pooled features, threshold at a
validation percentile) on a trained model's train / validation images, then scores the test split's fundus images and
non-fundus pictures made here: rendered text pages, matplotlib charts, charts drawn over a fundus crop, blank frames,
noise, and the natural photographs that installed packages ship (matplotlib's, scikit-learn's and gradio's sample
images, with crops; nothing is downloaded). Reports the AUROC of the score (fundus = negative), per kind and overall,
the share of each kind flagged at the threshold, and the share of the test split flagged.

Usage::

    OMP_NUM_THREADS=2 python bench/ood_guard.py --model_name_or_path outputs/demo \\
        --dataset_dir data/retinavqa-synthetic --max_images 300

``--save`` also writes the fitted guard into the model folder (as ``python -m retina_vqa.ood fit`` does).
"""

from __future__ import annotations

import argparse
import io
import json
import textwrap
import time
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from common import machine_info, quiet
from PIL import Image, ImageDraw

from retina_vqa.data.images import load_image
from retina_vqa.inference import load_for_inference
from retina_vqa.ood import DEFAULT_PERCENTILE, OODGuard, features_of, split_features

# Sample pictures that installed packages ship, as (package, path inside it).
SHIPPED_PHOTOS = [
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("gradio", "media_assets/images/cheetah1.jpg"),
    ("gradio", "media_assets/images/tower.jpg"),
]


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counting one half (the Mann-Whitney U statistic)."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _figure_image(figure) -> Image.Image:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


def text_pages(count: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    words = "retina fundus grade lesion report patient screening referral macula optic disc vessel exudate".split()
    pages = []
    for _ in range(count):
        page = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        text = " ".join(rng.choice(words, size=400))
        for line, row in enumerate(textwrap.wrap(text, width=max(10, size // 7))[: size // 12]):
            draw.text((6, 4 + 12 * line), row, fill=(0, 0, 0))
        pages.append(page)
    return pages


def charts(count: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    import matplotlib.pyplot as plt

    images = []
    for k in range(count):
        figure, axes = plt.subplots(figsize=(4, 4), dpi=size / 4)
        x = np.arange(12)
        kind = k % 3
        if kind == 0:
            axes.plot(x, rng.normal(size=12).cumsum(), marker="o")
        elif kind == 1:
            axes.bar(x, rng.uniform(1, 5, size=12))
        else:
            axes.scatter(rng.normal(size=40), rng.normal(size=40), c=rng.uniform(size=40))
        axes.set_title(f"figure {k}")
        axes.grid(True)
        images.append(_figure_image(figure))
    return images


def charts_over_fundus(fundus: Sequence[Image.Image], size: int, rng: np.random.Generator) -> list[Image.Image]:
    """A crop of a fundus photograph shown as a chart: axes, ticks, grid, markers and a line drawn over it."""
    import matplotlib.pyplot as plt

    images = []
    for image in fundus:
        width, height = image.size
        side = int(min(width, height) * rng.uniform(0.5, 0.8))
        left, top = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
        crop = image.crop((left, top, left + side, top + side))
        figure, axes = plt.subplots(figsize=(4, 4), dpi=size / 4)
        axes.imshow(np.asarray(crop), extent=(0, 10, 0, 10))
        axes.plot(np.arange(11), rng.uniform(0, 10, size=11), "w-o", markersize=4)
        axes.scatter(rng.uniform(0, 10, size=8), rng.uniform(0, 10, size=8), marker="x", c="yellow")
        axes.grid(True, color="white", alpha=0.5)
        axes.set_xlabel("x (mm)")
        axes.set_ylabel("y (mm)")
        images.append(_figure_image(figure))
    return images


def blank_frames(size: int) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), colour) for colour in ((0, 0, 0), (255, 255, 255), (128, 128, 128))]


def noise_images(count: int, size: int, rng: np.random.Generator) -> list[Image.Image]:
    images = []
    for k in range(count):
        if k % 2:
            array = rng.integers(0, 256, size=(size, size, 3))
        else:
            array = np.clip(rng.normal(128, 40, size=(size, size, 3)), 0, 255)
        images.append(Image.fromarray(array.astype(np.uint8)))
    return images


def shipped_photos(size: int, rng: np.random.Generator, crops: int = 3) -> list[Image.Image]:
    """The sample photographs installed packages ship (whole, then `crops` random square crops each)."""
    images = []
    for package, relative in SHIPPED_PHOTOS:
        spec = find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            continue
        photo = load_image(str(path))
        images.append(photo.resize((size, size)))
        for _ in range(crops):
            side = int(min(photo.size) * rng.uniform(0.3, 0.7))
            left, top = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
            images.append(photo.crop((left, top, left + side, top + side)).resize((size, size)))
    return images


def test_fundus(dataset_dir: str, count: int) -> list[Image.Image]:
    from datasets import load_from_disk

    test = load_from_disk(dataset_dir)["test"]
    first: dict[str, int] = {}
    for row, image_id in enumerate(test["image_id"]):
        first.setdefault(image_id, row)
    rows = list(first.values())[:count]
    return [image.convert("RGB") for image in test.select(rows)["image"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="A model folder saved by run_vqa.py.")
    parser.add_argument("--dataset_dir", required=True, help="The DatasetDict it was trained on (save_to_disk).")
    parser.add_argument("--max_images", type=int, default=300, help="Distinct images per split, at most.")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE)
    parser.add_argument("--per_kind", type=int, default=12, help="Generated pictures of each kind.")
    parser.add_argument("--image_size", type=int, default=384, help="Side of the generated pictures.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", action="store_true", help="Also save the fitted guard into the model folder.")
    parser.add_argument("--output_json", help="Also write the results here.")
    args = parser.parse_args()
    quiet()
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()

    model, processor = load_for_inference(args.model_name_or_path, device="cpu")
    train = split_features(model, processor, args.dataset_dir, "train", max_images=args.max_images)
    validation = split_features(model, processor, args.dataset_dir, "validation", max_images=args.max_images)
    guard = OODGuard.fit(train, validation, args.percentile)
    if args.save:
        guard.save(args.model_name_or_path)

    fundus = test_fundus(args.dataset_dir, args.max_images)
    size = args.image_size
    others = {
        "text page": text_pages(args.per_kind, size, rng),
        "chart": charts(args.per_kind, size, rng),
        "chart over fundus crop": charts_over_fundus(fundus[: args.per_kind], size, rng),
        "blank frame": blank_frames(size),
        "noise": noise_images(args.per_kind, size, rng),
        "natural photo": shipped_photos(size, rng),
    }
    fundus_scores = guard.score(features_of(model, processor, fundus)).tolist()
    kind_scores = {kind: guard.score(features_of(model, processor, images)).tolist() for kind, images in others.items()
                   if images}  # fmt: skip
    all_others = [score for scores in kind_scores.values() for score in scores]

    def flagged(scores: Sequence[float]) -> float:
        return float(np.mean(np.asarray(scores) > guard.threshold))

    results = {
        "model": args.model_name_or_path,
        "dataset": args.dataset_dir,
        "train_images": guard.num_train,
        "validation_images": guard.num_validation,
        "test_images": len(fundus),
        "feature_size": guard.feature_size,
        "shrinkage": guard.shrinkage,
        "percentile": guard.percentile,
        "threshold": guard.threshold,
        "test_flagged": flagged(fundus_scores),
        "auroc": auroc(fundus_scores, all_others),
        "non_fundus_images": len(all_others),
        "non_fundus_flagged": flagged(all_others),
        "fundus_score_median": float(np.median(fundus_scores)),
        "kinds": {
            kind: {
                "images": len(scores),
                "auroc": auroc(fundus_scores, scores),
                "flagged": flagged(scores),
                "score_median": float(np.median(scores)),
            }
            for kind, scores in kind_scores.items()
        },
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
    }
    print("BENCH_JSON " + json.dumps(results))
    print(
        f"\nGuard: {guard.num_train} train / {guard.num_validation} validation images, {guard.feature_size} features, "
        f"shrinkage {guard.shrinkage:.3f}, threshold {guard.threshold:.2f} ({guard.percentile:g}th percentile)"
    )
    print(f"Test split: {len(fundus)} fundus images, {results['test_flagged']:.1%} flagged, median score "
          f"{results['fundus_score_median']:.2f}\n")  # fmt: skip
    print("| kind | images | AUROC vs test fundus | flagged | median score |")
    print("|---|---:|---:|---:|---:|")
    for kind, row in results["kinds"].items():
        print(f"| {kind} | {row['images']} | {row['auroc']:.3f} | {row['flagged']:.1%} | {row['score_median']:.2f} |")
    print(f"| **all non-fundus** | {len(all_others)} | **{results['auroc']:.3f}** | "
          f"{results['non_fundus_flagged']:.1%} | |")  # fmt: skip
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
