"""Learnability probe for the synthetic fundus images: can a tiny image-only model tell the ICDR grades apart?

Generates (or loads) a small synthetic set, shrinks the images to 128 px and then to ``--probe_size``,
and fits two grade classifiers from scratch on CPU: multinomial logistic regression on downsampled
pixels plus colour histograms, and a three-layer CNN. Prints test accuracy against chance (0.2) and
the confusion matrices. If the CNN does not beat the linear model and chance by a wide margin, the
lesions are too faint for a small model at low resolution.

Usage::

    python bench/grade_probe.py                       # 400 train / 200 test images at 384 px
    python bench/grade_probe.py --dataset_dir data/retinavqa-synthetic --probe_size 64
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from PIL import Image
from torch import nn

from retina_vqa import synthetic

logger = logging.getLogger("grade_probe")


def _one_row_per_image(ds):
    # Any single question type gives exactly one row per image; fall back to deduplicating ids.
    meta = ds.select_columns(["image_id", "grade"]).to_dict()
    first: dict[str, int] = {}
    for i, image_id in enumerate(meta["image_id"]):
        first.setdefault(image_id, i)
    return ds.select(sorted(first.values()))


def _to_arrays(ds, probe_size: int) -> tuple[np.ndarray, np.ndarray]:
    images, grades = [], []
    for row in ds:
        img = row["image"].convert("RGB")
        # The project trains at 128 px; the probe sees what survives that resize.
        img = img.resize((128, 128), Image.Resampling.BICUBIC)
        if probe_size != 128:
            img = img.resize((probe_size, probe_size), Image.Resampling.BOX)
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
        grades.append(int(row["grade"]))
    return np.stack(images), np.asarray(grades, dtype=np.int64)


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if args.dataset_dir:
        import datasets

        dd = datasets.load_from_disk(args.dataset_dir)
        train, test = _one_row_per_image(dd["train"]), _one_row_per_image(dd[args.test_split])
    else:
        dd = synthetic.generate_dataset(
            args.num_train_images,
            0,
            args.num_test_images,
            image_size=args.image_size,
            seed=args.seed,
            question_types=["diagnosis"],
        )
        train, test = dd["train"], dd["test"]
    x_train, y_train = _to_arrays(train, args.probe_size)
    x_test, y_test = _to_arrays(test, args.probe_size)
    return x_train, y_train, x_test, y_test


def _hand_features(x: np.ndarray) -> np.ndarray:
    """Downsampled pixels (16x16) plus per-channel colour histograms inside the field of view."""
    n, s = x.shape[:2]
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    small = nn.functional.adaptive_avg_pool2d(t, 16).reshape(n, -1).numpy()
    yy, xx = np.mgrid[0:s, 0:s]
    fov = (xx + 0.5 - s / 2) ** 2 + (yy + 0.5 - s / 2) ** 2 < (0.45 * s) ** 2
    pixels = x[:, fov]  # n, p, 3
    hists = [np.stack([np.histogram(img[:, c], bins=16, range=(0, 1))[0] for c in range(3)]).ravel() for img in pixels]
    hist = np.asarray(hists, dtype=np.float32) / fov.sum()
    return np.concatenate([small, hist * 10.0], axis=1)


def fit_logreg(x_train, y_train, x_test, epochs: int = 300) -> np.ndarray:
    f_train, f_test = _hand_features(x_train), _hand_features(x_test)
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    a = torch.from_numpy(((f_train - mean) / std).astype(np.float32))
    b = torch.from_numpy(((f_test - mean) / std).astype(np.float32))
    y = torch.from_numpy(y_train)
    model = nn.Linear(a.shape[1], 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(a), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(b).argmax(1).numpy()


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64))
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Lesion counts matter more than where they are: average, not flatten.
        return self.head(self.features(x).mean(dim=(2, 3)))


def fit_cnn(x_train, y_train, x_test, epochs: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    a = torch.from_numpy(x_train).permute(0, 3, 1, 2).contiguous()
    b = torch.from_numpy(x_test).permute(0, 3, 1, 2).contiguous()
    mean = a.mean(dim=(0, 2, 3), keepdim=True)
    std = a.std(dim=(0, 2, 3), keepdim=True)
    a, b = (a - mean) / std, (b - mean) / std
    y = torch.from_numpy(y_train)
    model = TinyCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(a) + 31) // 32))
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(a), generator=gen)
        total = 0.0
        for i in range(0, len(a), 32):
            idx = perm[i : i + 32]
            xb = a[idx]
            # Mirroring swaps left and right eyes but keeps the grade.
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0:
            logger.info("cnn epoch %d loss %.3f", epoch + 1, total / len(a))
    model.eval()
    with torch.no_grad():
        return model(b).argmax(1).numpy()


def report(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    acc = float((y_true == y_pred).mean())
    cm = np.zeros((5, 5), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    print(f"\n{name}: accuracy {acc:.3f} (chance 0.200, n={len(y_true)})")
    print("confusion matrix (rows: true grade, columns: predicted grade)")
    print("      " + " ".join(f"{g:>4d}" for g in range(5)))
    for g in range(5):
        print(f"  {g:>2d}  " + " ".join(f"{v:>4d}" for v in cm[g]))
    return acc


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_dir", default=None, help="reuse a save_to_disk dataset instead of generating")
    p.add_argument("--test_split", default="test")
    p.add_argument("--num_train_images", type=int, default=400)
    p.add_argument("--num_test_images", type=int, default=200)
    p.add_argument("--image_size", type=int, default=384)
    p.add_argument("--probe_size", type=int, default=64, choices=(32, 64, 128))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    start = time.time()
    x_train, y_train, x_test, y_test = load_data(args)
    logger.info("data ready in %.1fs: train %s, test %s", time.time() - start, x_train.shape, x_test.shape)

    t = time.time()
    acc_lr = report("logistic regression (pixels + colour histograms)", y_test, fit_logreg(x_train, y_train, x_test))
    logger.info("logistic regression took %.1fs", time.time() - t)
    t = time.time()
    acc_cnn = report(
        f"tiny CNN ({args.epochs} epochs)", y_test, fit_cnn(x_train, y_train, x_test, args.epochs, args.seed)
    )
    logger.info("cnn took %.1fs", time.time() - t)
    print(
        f"\nsummary: probe_size {args.probe_size}, logistic regression {acc_lr:.3f}, CNN {acc_cnn:.3f}, "
        f"chance 0.200, total {time.time() - start:.0f}s"
    )


if __name__ == "__main__":
    main()
