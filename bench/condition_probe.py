"""Learnability probe for the multi-disease synthetic images: can a tiny image-only CNN tell each condition?

Generates a small multi-disease set (``--conditions all``) at the demo's 128 px and fits one three-to-four layer
CNN from scratch on CPU with a head per condition: the DR grade (0-4), the glaucoma, AMD, hypertensive and vein
occlusion stages ("none" included), and the cup-to-disc ratio (regression). Prints, per condition, the test
accuracy of presence (any stage vs none) and of the stage against chance (the test split's most common answer),
and the cup-to-disc ratio's mean absolute error against always answering the training mean. A condition whose
accuracy stays at chance is drawn too faintly for a small model at the demo size.

Usage::

    python bench/condition_probe.py                          # 800 train / 400 test images, ~6 min on 1 core
    python bench/condition_probe.py --num_train_images 200 --num_test_images 100 --epochs 5   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
from torch import nn

from retina_vqa import synthetic
from retina_vqa.questions import AMD_STAGES, GLAUCOMA_STAGES, HYPERTENSIVE_GRADES, VEIN_OCCLUSION_TYPES

logger = logging.getLogger("condition_probe")

# Head name -> the labels it predicts (index = class). "dr" is the ICDR grade.
HEADS: dict[str, tuple[str, ...]] = {
    "dr": ("0", "1", "2", "3", "4"),
    "glaucoma": GLAUCOMA_STAGES,
    "amd": AMD_STAGES,
    "hypertensive": HYPERTENSIVE_GRADES,
    "rvo": VEIN_OCCLUSION_TYPES,
}


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, dict, np.ndarray, dict]:
    prevalence = ",".join(f"{c}={args.prevalence}" for c in synthetic.CONDITIONS if c != "dr")
    dd = synthetic.generate_dataset(
        args.num_train_images,
        0,
        args.num_test_images,
        image_size=args.image_size,
        seed=args.seed,
        question_types=["diagnosis"],  # one row per image; the labels come from the metadata columns
        conditions="all",
        prevalence=prevalence,
        grade_weights=args.grade_weights,
        quality_defect_rate=0.0,
        num_workers=args.num_workers,
    )
    return (*_to_arrays(dd["train"]), *_to_arrays(dd["test"]))


def _to_arrays(ds) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    images, labels = [], {name: [] for name in (*HEADS, "cup_to_disc")}
    for row in ds:
        images.append(np.asarray(row["image"].convert("RGB"), dtype=np.float32) / 255.0)
        meta = row["conditions"]
        labels["dr"].append(int(row["grade"]))
        for name in ("glaucoma", "amd", "hypertensive", "rvo"):
            labels[name].append(HEADS[name].index(meta[name]))
        labels["cup_to_disc"].append(float(meta["cup_to_disc"]))
    return np.stack(images), {k: np.asarray(v) for k, v in labels.items()}


class MultiHeadCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64), block(64, 96))
        # Average and max pooling: counts of lesions (average) and the single brightest / darkest spot (max).
        self.heads = nn.ModuleDict({name: nn.Linear(192, len(labels)) for name, labels in HEADS.items()})
        self.cup = nn.Linear(192, 1)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return {name: head(pooled) for name, head in self.heads.items()}, self.cup(pooled).squeeze(1)


def fit(x_train, y_train, x_test, epochs: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    torch.manual_seed(seed)
    a = torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous()
    b = torch.from_numpy(x_test).permute(0, 3, 1, 2).contiguous()
    mean, std = a.mean(dim=(0, 2, 3), keepdim=True), a.std(dim=(0, 2, 3), keepdim=True)
    a, b = (a - mean) / std, (b - mean) / std
    ys = {k: torch.from_numpy(v) for k, v in y_train.items()}
    cup_mean = float(ys["cup_to_disc"].float().mean())
    model = MultiHeadCNN()
    batch = 32
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(a) + batch - 1) // batch))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(a), generator=gen)
        total = 0.0
        for i in range(0, len(a), batch):
            idx = perm[i : i + batch]
            xb = a[idx]
            # Mirroring swaps left and right eyes; no condition here depends on the side.
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            logits, cup = model(xb)
            loss = sum(nn.functional.cross_entropy(logits[k], ys[k][idx]) for k in HEADS)
            loss = loss + 20.0 * nn.functional.mse_loss(cup, ys["cup_to_disc"][idx].float() - cup_mean)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        logger.info("epoch %d loss %.3f", epoch + 1, total / len(a))
    model.eval()
    with torch.no_grad():
        logits, cup = model(b)
    return {k: v.argmax(1).numpy() for k, v in logits.items()}, cup.numpy() + cup_mean


def summarise(y_test: dict, predicted: dict, cup_pred: np.ndarray, cup_train_mean: float) -> dict[str, dict]:
    rows = {}
    for name, labels in HEADS.items():
        true, pred = y_test[name], predicted[name]
        present_true, present_pred = true > 0, pred > 0
        presence_chance = max(present_true.mean(), 1 - present_true.mean())
        stage_chance = np.bincount(true, minlength=len(labels)).max() / len(true)
        rows[name] = {
            "presence_accuracy": float((present_true == present_pred).mean()),
            "presence_chance": float(presence_chance),
            "stage_accuracy": float((true == pred).mean()),
            "stage_chance": float(stage_chance),
            "prevalence": float(present_true.mean()),
            # Recall of each stage: where the errors are (the faintest stages).
            "stage_recall": {
                label: float((pred[true == k] == k).mean()) for k, label in enumerate(labels) if (true == k).any()
            },
        }
    cup_true = y_test["cup_to_disc"]
    rows["cup_to_disc"] = {
        "mean_absolute_error": float(np.abs(cup_pred - cup_true).mean()),
        "within_0.05": float((np.abs(cup_pred - cup_true) <= 0.05).mean()),
        "mean_absolute_error_of_train_mean": float(np.abs(cup_train_mean - cup_true).mean()),
    }
    return rows


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_train_images", type=int, default=800)
    p.add_argument("--num_test_images", type=int, default=400)
    p.add_argument("--image_size", type=int, default=128, help="rendered and probed size (the demo's 128 px)")
    p.add_argument("--prevalence", type=float, default=0.5, help="of each condition besides DR (chance ~0.5)")
    p.add_argument("--grade_weights", default="1,1,1,1,1", help="relative frequency of DR grades 0-4")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=1, help="rendering processes")
    args = p.parse_args(argv)

    start = time.time()
    x_train, y_train, x_test, y_test = load_data(args)
    logger.info("data ready in %.1fs: train %s, test %s", time.time() - start, x_train.shape, x_test.shape)
    t = time.time()
    predicted, cup_pred = fit(x_train, y_train, x_test, args.epochs, args.seed)
    logger.info("cnn took %.1fs", time.time() - t)
    rows = summarise(y_test, predicted, cup_pred, float(y_train["cup_to_disc"].mean()))

    print(f"\ntest images: {len(x_test)}, trained on {len(x_train)} at {args.image_size} px, {args.epochs} epochs")
    print(f"{'condition':<14} {'prevalence':>10} {'presence':>9} {'chance':>7} {'stage':>7} {'chance':>7}")
    for name in HEADS:
        r = rows[name]
        print(
            f"{name:<14} {r['prevalence']:>10.2f} {r['presence_accuracy']:>9.3f} {r['presence_chance']:>7.3f} "
            f"{r['stage_accuracy']:>7.3f} {r['stage_chance']:>7.3f}"
        )
    print("recall per stage:")
    for name in HEADS:
        print(f"  {name:<12} " + ", ".join(f"{k} {v:.2f}" for k, v in rows[name]["stage_recall"].items()))
    c = rows["cup_to_disc"]
    print(
        f"cup-to-disc ratio: mean absolute error {c['mean_absolute_error']:.3f} (training mean: "
        f"{c['mean_absolute_error_of_train_mean']:.3f}), within 0.05: {c['within_0.05']:.3f}"
    )
    print(f"total {time.time() - start:.0f}s")
    print("PROBE_JSON " + json.dumps({"args": vars(args), "results": rows}))


if __name__ == "__main__":
    main()
