"""Cross-camera generalisation: how far a model trained on one camera travels to the next, with and without --augment.

The field's known weakness is the next camera (RETFound trained on APTOS: AUROC 0.943 on APTOS, 0.822 on IDRiD, 0.738
on Messidor-2). This benchmark measures the same on synthetic RetinaVQA, where the eyes are held fixed and only the
camera changes (retina_vqa.synthetic.camera: colour cast, fall-off, field and mask, resolution and blur, JPEG):

1. generates (cached under $RETINA_VQA_BENCH_CACHE, like common.py) a training set (train / validation / test)
   photographed by ``--train_camera`` and, for every camera of ``--cameras``, the test split of the same seed: the
   same eyes, grades and questions through each camera;
2. trains the tiny BLIP from scratch with run_vqa.py (a subprocess: configs/demo.yaml's settings, ``--num_train_epochs``
   and the image counts of this script) without and with ``--augment``, the same seed;
3. answers every camera's test split with each model (``python -m retina_vqa.predict --dataset_dir A B C --answer_mode
   auto``: the cross-dataset table, cross_dataset-test.json) and tabulates per camera and variant: diagnosis accuracy,
   QWK, macro AUROC, referable-DR sensitivity and specificity (of the answered grades, per eye) and exact match over
   all questions, and each one's drop from the training camera. The JSON line also holds each camera's whole
   cross-dataset row (the referral operating points chosen on the training camera's validation split included).

    python bench/cross_camera.py            # 1,500 / 100 / 300 images at 128 px, 10 epochs per variant (2 x ~15 min)
    python bench/cross_camera.py --quick    # smoke test, about a minute: 40 / 10 / 20 images, 1 epoch
    python bench/cross_camera.py --cameras default handheld --num_train_epochs 5

Each run writes outputs/cross-camera/<variant>/ (all_results.json, predictions-<camera>-test.jsonl,
cross_dataset-test.*). One seed: compare against the spread of repeated seeds (--seed) before reading a small
difference as an effect.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

ROOT = common.ROOT
METRICS = {
    # column: (cross-dataset summary key, or "diagnosis_accuracy" computed from the predictions)
    "diagnosis acc.": "diagnosis_accuracy",
    "QWK": "diagnosis_qwk",
    "macro AUROC": "diagnosis_macro_auroc",
    "referable sens.": "diagnosis_referable_sensitivity",
    "referable spec.": "diagnosis_referable_specificity",
    "exact match": "exact_match",
}


def camera_dataset(camera: str, counts: tuple[int, int, int], image_size: int, seed: int) -> Path:
    """A synthetic RetinaVQA photographed by `camera`, saved as the generator saves it; generated once and cached. The
    folder is named after the camera: predict's cross-dataset table names each dataset by its folder."""
    from retina_vqa.synthetic import generate_dataset, save_dataset

    key = "-".join(str(n) for n in counts)
    path = common.CACHE_ROOT / f"cross-camera-{key}-{image_size}px-seed{seed}" / camera
    if not (path / "dataset_dict.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent))
        save_dataset(
            generate_dataset(*counts, image_size=image_size, seed=seed, camera=camera), tmp / camera, camera=camera
        )
        os.replace(tmp / camera, path)
        os.rmdir(tmp)
    return path


def train(variant: str, train_dir: Path, output_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, str(ROOT / "run_vqa.py"), str(ROOT / "configs" / "demo.yaml"),
        "--dataset_dir", str(train_dir), "--output_dir", str(output_dir),
        "--num_train_epochs", str(args.num_train_epochs), "--seed", str(args.seed), "--plot", "false",
        "--max_eval_samples", str(args.num_validation_images * 13), "--disable_tqdm", "true",
        "--augment", "true" if variant == "augment" else "false",  # explicit: configs/demo.yaml augments
        *(["--warmup_steps", "2", "--save_strategy", "no", "--eval_strategy", "no"] if args.quick else []),
        *args.extra,
    ]  # fmt: skip
    print(f"[{time.strftime('%H:%M:%S')}] {variant}: {' '.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((output_dir / "all_results.json").read_text())
    return {"train_minutes": round((time.perf_counter() - started) / 60, 2), "train_loss": results.get("train_loss")}


def evaluate(model_dir: Path, test_dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Every camera's test split answered by the model: its row of the cross-dataset table, with diagnosis accuracy."""
    command = [
        sys.executable, "-m", "retina_vqa.predict", "--model_name_or_path", str(model_dir),
        "--dataset_dir", *(str(p) for p in test_dirs.values()), "--split", "test", "--answer_mode", "auto",
        "--batch_size", "64",
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    summaries = {s["dataset"]: s for s in json.loads((model_dir / "cross_dataset-test.json").read_text())}
    rows = {}
    for camera in test_dirs:
        summary = summaries[f"{camera}-test"]  # predict names a dataset <folder>-<split>
        records = [json.loads(line) for line in (model_dir / f"predictions-{camera}-test.jsonl").open()]
        diagnosis = [r["correct"] for r in records if r.get("question_type") == "diagnosis"]
        rows[camera] = {**summary, "diagnosis_accuracy": sum(diagnosis) / len(diagnosis) if diagnosis else None}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny counts, 1 epoch (about a minute)")
    parser.add_argument("--cameras", nargs="+", default=None, help="cameras to test on (default: all)")
    parser.add_argument("--train_camera", default="default", help="camera of the training set (default: default)")
    parser.add_argument("--variants", nargs="+", default=["no_augment", "augment"], choices=["no_augment", "augment"])
    parser.add_argument("--num_train_images", type=int, default=1500)
    parser.add_argument("--num_validation_images", type=int, default=100)
    parser.add_argument("--num_test_images", type=int, default=300)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--num_train_epochs", type=float, default=10)
    parser.add_argument("--seed", type=int, default=42, help="training seed")
    parser.add_argument("--data_seed", type=int, default=0, help="generator seed (the same eyes for every camera)")
    parser.add_argument("--output_root", default=str(ROOT / "outputs" / "cross-camera"))
    parser.add_argument("extra", nargs="*", help="flags passed on to run_vqa.py (after --)")
    args = parser.parse_args()
    from retina_vqa.synthetic.camera import CAMERAS

    if args.quick:
        args.num_train_images, args.num_validation_images, args.num_test_images = 40, 10, 20
        args.num_train_epochs = 1
    cameras = args.cameras or list(CAMERAS)
    unknown = [c for c in [*cameras, args.train_camera] if c not in CAMERAS]
    if unknown:
        parser.error(f"unknown cameras {unknown}; choose from {', '.join(CAMERAS)}")
    if args.train_camera not in cameras:
        cameras.insert(0, args.train_camera)
    common.quiet()

    counts = (args.num_train_images, args.num_validation_images, args.num_test_images)
    train_dir = camera_dataset(args.train_camera, counts, args.image_size, args.data_seed)
    # Every camera's test split: the same seed and count, so the same eyes (a test split depends on nothing else).
    test_dirs = {c: camera_dataset(c, (0, 0, args.num_test_images), args.image_size, args.data_seed) for c in cameras}

    results: dict[str, dict[str, dict[str, Any]]] = {}
    runs = {}
    for variant in args.variants:
        output_dir = Path(args.output_root) / variant
        runs[variant] = train(variant, train_dir, output_dir, args)
        results[variant] = evaluate(output_dir, test_dirs)

    rows, table = [], []
    for variant, per_camera in results.items():
        base = per_camera[args.train_camera]
        for camera, values in per_camera.items():
            row: dict[str, Any] = {"variant": variant, "camera": camera}
            for name, key in METRICS.items():
                value, reference = values.get(key), base.get(key)
                row[name] = value
                row[f"{name} drop"] = None if value is None or reference is None else reference - value
            table.append(row)
            rows.append({**row, "summary": values})

    common.emit_json(
        "cross_camera",
        {
            "settings": {k: v for k, v in vars(args).items() if k != "extra"} | {"extra": args.extra},
            "train_camera": args.train_camera,
            "runs": runs,
            "rows": rows,
        },
    )
    header = ["variant", "camera", *(h for name in METRICS for h in (name, f"{name} drop"))]
    common.print_table(
        f"Test split per camera, trained on {args.train_camera} ({args.num_train_images} images, "
        f"{args.num_train_epochs:g} epochs); drop = training camera minus this camera",
        header,
        [[("-" if row[h] is None else round(row[h], 3) if isinstance(row[h], float) else row[h]) for h in header]
         for row in table],
    )  # fmt: skip


if __name__ == "__main__":
    main()
