"""Image grouping and accuracy: the demo trained with questions of an image grouped in runs of k, same seed.

`--group_by_image` saves image-encoder work by putting questions of one image in the same batch; the bound
`--max_questions_per_image k` spreads a batch of B questions over about B / k images. This runs the
embedded demo (configs/demo.yaml: tiny BLIP from scratch, synthetic RetinaVQA at 128 px, 10 epochs) once per
variant, one after the other with the same seed and data, and tabulates test-split accuracy next to training
speed, so the default can be chosen from numbers:

    python bench/image_grouping.py                          # all variants, ~10 min each on 2 cores
    python bench/image_grouping.py --variants 0 4 random    # 0: every question of an image together

Needs the demo data (`make data`). Each run writes outputs/image-grouping/<variant>/ (its all_results.json is
the source of every number here). Accuracy moves with the seed too: compare against the spread of repeated
seeds (--seeds) before reading a small difference as an effect.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "test diagnosis": "predict_exact_match/diagnosis",
    "test abnormality": "predict_exact_match/abnormality",
    "test all": "predict_exact_match",
    "validation all": "eval_exact_match",
    "train loss": "train_loss",
    "train samples/s": "train_samples_per_second",
}


def run_variant(variant: str, seed: int, output_root: Path, extra: list[str]) -> dict:
    output_dir = output_root / f"{variant}-seed{seed}"
    flags = ["--group_by_image", "false"] if variant == "random" else ["--max_questions_per_image", variant]
    command = [
        sys.executable,
        str(ROOT / "run_vqa.py"),
        str(ROOT / "configs" / "demo.yaml"),
        "--output_dir",
        str(output_dir),
        "--seed",
        str(seed),
        "--plot",
        "false",
        *flags,
        *extra,
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(command)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((output_dir / "all_results.json").read_text())
    row = {"variant": variant, "seed": seed, "minutes": round((time.perf_counter() - started) / 60, 1)}
    row.update({name: results.get(key) for name, key in KEYS.items()})
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["0", "4", "2", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--output_root", default=str(ROOT / "outputs" / "image-grouping"))
    parser.add_argument("extra", nargs="*", help="flags passed on to run_vqa.py (after --)")
    args = parser.parse_args()
    if not (ROOT / "data" / "retinavqa-synthetic" / "dataset_dict.json").exists():
        parser.error("the demo data is missing: run `make data` first")
    os.environ.setdefault("WANDB_MODE", "disabled")
    rows = [
        run_variant(variant, seed, Path(args.output_root), args.extra)
        for seed in args.seeds
        for variant in args.variants
    ]
    print("BENCH_JSON " + json.dumps({"benchmark": "image_grouping", "rows": rows}))
    header = ["variant", "seed", *KEYS, "minutes"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in header]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
