"""The out-of-distribution guard: does an image look like the fundus photographs the model was trained on?

A model answers whatever it is shown: a plot, a document or a blank frame gets a diagnosis with a confident
probability. The guard fits a Gaussian density to the image encoder's pooled features of the training images
(mean over the patch tokens of its last hidden state) and scores an image by its Mahalanobis distance to it; an
image farther than the chosen percentile (default 99th) of a validation set's distances is flagged. It is saved with
the model (``ood_guard.safetensors``: mean and precision; ``ood_guard.json``: threshold, percentile, counts, feature
size, version) and found there by `retina_vqa.inference.answer_questions`, `retina_vqa.predict` and the app.

Fit it for an existing model folder::

    python -m retina_vqa.ood fit --model_name_or_path outputs/demo --dataset_dir data/retinavqa-synthetic

This module lives next to `inference` rather than in `models/` because its command line reads datasets
(`data.images`, `datasets`), which the model layer never imports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from .data.images import ImageSource, image_key, load_image
from .models.blip import encode_images
from .models.blip2 import model_family

__all__ = [
    "GUARD_CONFIG",
    "GUARD_WEIGHTS",
    "OOD_WARNING",
    "OODGuard",
    "find_ood_guard",
    "image_features",
    "ledoit_wolf",
    "main",
    "ood_warning",
]

logger = logging.getLogger(__name__)

GUARD_WEIGHTS = "ood_guard.safetensors"
GUARD_CONFIG = "ood_guard.json"
GUARD_VERSION = 1
DEFAULT_PERCENTILE = 99.0  # about 1 in 100 in-distribution images flagged: a warning, not a refusal
OOD_WARNING = "this does not look like the fundus photographs the model was trained on"


def ood_warning(check: dict[str, Any]) -> str:
    """The sentence predict prints and the app shows for a flagged image."""
    return f"Warning: {OOD_WARNING} (score {check['score']:.2f} > threshold {check['threshold']:.2f})."


@torch.no_grad()
def image_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pooled image-encoder features (batch x hidden, float64): the mean over the patch tokens (the class token left
    out) of the image encoder's last hidden state -- BLIP's `encode_images`, BLIP-2 / InstructBLIP's
    ``vision_model``, the states the question encoder or Q-Former reads."""
    parameter = next(model.vision_model.parameters())
    pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
    if model_family(model.config) == "blip":
        states = encode_images(model, pixel_values)
    else:
        states = model.vision_model(pixel_values=pixel_values).last_hidden_state
    return states[:, 1:].double().mean(dim=1).cpu()


def features_of(model: Any, processor: Any, images: Sequence[PILImage.Image], batch_size: int = 32) -> torch.Tensor:
    """`image_features` of loaded RGB images, through the model's image processor, in batches."""
    parts = []
    for start in range(0, len(images), batch_size):
        pixels = processor.image_processor(images=list(images[start : start + batch_size]), return_tensors="pt")
        parts.append(image_features(model, pixels["pixel_values"]))
    return torch.cat(parts) if parts else torch.zeros(0, 0, dtype=torch.float64)


def ledoit_wolf(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The Ledoit-Wolf shrunk covariance of `features` (samples x dims) and its shrinkage in [0, 1]:
    ``(1 - s) * S + s * trace(S) / d * I``, with `s` the estimate that minimises the expected squared error. With
    fewer images than feature dimensions the sample covariance `S` is singular; the shrunk one is not."""
    x = features.double() - features.double().mean(dim=0)
    n, d = x.shape
    sample = x.T @ x / n
    mu = torch.trace(sample) / d
    if mu <= 0:
        raise ValueError("All the images have the same features: the guard needs varied training images.")
    x2 = x**2
    beta_sum = (x2.T @ x2).sum() / n
    delta_sum = (sample**2).sum()
    beta = (beta_sum - delta_sum) / (d * n)
    delta = ((sample - mu * torch.eye(d, dtype=sample.dtype)) ** 2).sum() / d
    shrinkage = 0.0 if delta == 0 else float(min(beta, delta) / delta)
    shrinkage = max(shrinkage, 0.0)
    covariance = (1 - shrinkage) * sample + shrinkage * mu * torch.eye(d, dtype=sample.dtype)
    return covariance, shrinkage


@dataclass
class OODGuard:
    """A Gaussian density on pooled image features: `score` is the Mahalanobis distance to `mean` under `precision`
    (the inverse of the Ledoit-Wolf covariance of the training features); above `threshold` (the `percentile` of
    the validation images' scores) an image is flagged."""

    mean: torch.Tensor  # (hidden,) float64
    precision: torch.Tensor  # (hidden, hidden) float64
    threshold: float
    percentile: float = DEFAULT_PERCENTILE
    num_train: int = 0
    num_validation: int = 0
    shrinkage: float = 0.0

    @property
    def feature_size(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(
        cls, train_features: torch.Tensor, validation_features: torch.Tensor, percentile: float = DEFAULT_PERCENTILE
    ) -> OODGuard:
        """Mean and shrunk covariance from `train_features`; the threshold at `percentile` of the scores of
        `validation_features` (images not used for the density, so the threshold is not optimistic)."""
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}.")
        if len(train_features) < 2:
            raise ValueError(f"The guard needs at least 2 training images, got {len(train_features)}.")
        if len(validation_features) < 1:
            raise ValueError("The guard needs at least 1 validation image to set its threshold.")
        train = train_features.double()
        covariance, shrinkage = ledoit_wolf(train)
        precision = torch.linalg.inv(covariance)
        # Symmetric and row-major, as it is saved: scores from a loaded guard are the same to the last bit.
        precision = ((precision + precision.T) / 2).contiguous()
        guard = cls(
            mean=train.mean(dim=0),
            precision=precision,
            threshold=0.0,
            percentile=float(percentile),
            num_train=len(train_features),
            num_validation=len(validation_features),
            shrinkage=shrinkage,
        )
        # numpy's default (linear) percentile: the threshold a reader recomputes from the validation scores.
        guard.threshold = float(np.percentile(guard.score(validation_features).numpy(), percentile))
        return guard

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each row of `features` to the training mean (0 at the mean)."""
        if features.ndim != 2 or features.shape[1] != self.feature_size:
            raise ValueError(
                f"features of shape {tuple(features.shape)} do not match the guard's {self.feature_size} features: "
                "the guard was fitted for another model; refit it (python -m retina_vqa.ood fit)."
            )
        centred = features.double() - self.mean
        return torch.einsum("nd,de,ne->n", centred, self.precision, centred).clamp_min(0).sqrt()

    def check(self, features: torch.Tensor) -> list[dict[str, Any]]:
        """``{"score", "threshold", "flagged"}`` per image, as answers carry it (``out_of_distribution``)."""
        return [
            {"score": float(d), "threshold": self.threshold, "flagged": bool(d > self.threshold)}
            for d in self.score(features).tolist()
        ]

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean.contiguous(), "precision": self.precision.contiguous()}, folder / GUARD_WEIGHTS)
        config = {
            "version": GUARD_VERSION,
            "feature_size": self.feature_size,
            "threshold": self.threshold,
            "percentile": self.percentile,
            "num_train": self.num_train,
            "num_validation": self.num_validation,
            "shrinkage": self.shrinkage,
            "features": "mean over patch tokens of the image encoder's last hidden state",
        }
        (folder / GUARD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike, feature_size: int | None = None) -> OODGuard:
        """The guard saved in `folder`; `feature_size`: the model's, checked against the guard's."""
        folder = Path(folder)
        config_path, weights_path = folder / GUARD_CONFIG, folder / GUARD_WEIGHTS
        refit = "refit it with python -m retina_vqa.ood fit, or delete both ood_guard files"
        missing = [path.name for path in (config_path, weights_path) if not path.is_file()]
        if missing:
            raise ValueError(f"{folder}: {' and '.join(missing)} missing: the guard needs both; {refit}.")
        try:
            config = json.loads(config_path.read_text())
            tensors = load_file(weights_path)
            mean, precision = tensors["mean"].double(), tensors["precision"].double()
            size = int(config["feature_size"])
            guard = cls(
                mean=mean,
                precision=precision,
                threshold=float(config["threshold"]),
                percentile=float(config["percentile"]),
                num_train=int(config.get("num_train", 0)),
                num_validation=int(config.get("num_validation", 0)),
                shrinkage=float(config.get("shrinkage", 0.0)),
            )
        except (KeyError, TypeError, ValueError, OSError) as error:
            raise ValueError(f"{folder}: malformed out-of-distribution guard ({error!r}); {refit}.") from error
        if config.get("version") != GUARD_VERSION:
            raise ValueError(f"{config_path}: version {config.get('version')!r}, expected {GUARD_VERSION}; {refit}.")
        if mean.shape != (size,) or precision.shape != (size, size):
            raise ValueError(
                f"{weights_path}: mean {tuple(mean.shape)} and precision {tuple(precision.shape)} do not match "
                f"feature_size {size} in {GUARD_CONFIG}; {refit}."
            )
        if feature_size is not None and size != feature_size:
            raise ValueError(
                f"{folder}: the guard has {size} features but the model's image encoder has {feature_size}: it was "
                f"fitted for another model; {refit}."
            )
        return guard


def model_feature_size(model: Any) -> int:
    return int(model.config.vision_config.hidden_size)


def find_ood_guard(model: Any, folder: str | os.PathLike | None = None) -> OODGuard | None:
    """The guard saved with the model (in `folder`, default the folder it was loaded from), or None when there is
    none. A guard that is there but broken or for another model raises `ValueError`."""
    folder = folder if folder is not None else getattr(model, "name_or_path", None)
    if not folder:
        return None
    if not Path(folder).is_dir():  # a hub id: the guard's files from the repository (cache), when it has them
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(os.fspath(folder), GUARD_WEIGHTS)
            folder = Path(hf_hub_download(os.fspath(folder), GUARD_CONFIG)).parent
        except Exception:  # no guard in the repository, offline, no such repository
            return None
    if not (Path(folder) / GUARD_CONFIG).exists() and not (Path(folder) / GUARD_WEIGHTS).exists():
        return None
    return OODGuard.load(folder, feature_size=model_feature_size(model))


def check_images(
    guard: OODGuard,
    model: Any,
    processor: Any,
    keys: Sequence[Any],
    load: Callable[[list[int]], list[PILImage.Image]],
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """The guard's check of every row (rows with the same image key share one check): each distinct image is loaded
    (`load` takes row indices) and encoded once."""
    first: dict[Any, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    rows = list(first.values())
    checks: dict[Any, dict[str, Any]] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        for row, check in zip(chunk, guard.check(features_of(model, processor, load(chunk), batch_size)), strict=True):
            checks[keys[row]] = check
    return [dict(checks[key]) for key in keys]


# ----------------------------------------------------------------------------------------------------
# Command line: fit the guard for a saved model
# ----------------------------------------------------------------------------------------------------


def split_features(
    model: Any,
    processor: Any,
    dataset_dir: str | os.PathLike,
    split: str,
    image_column: str = "image",
    max_images: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """`image_features` of the distinct images of a split of a saved DatasetDict (the first `max_images`)."""
    from datasets import Image, load_from_disk

    raw = load_from_disk(os.fspath(dataset_dir))
    if split not in raw:
        raise ValueError(f"--split {split!r} is not in {dataset_dir}; it has {list(raw)}.")
    column = raw[split].select_columns([image_column])
    if isinstance(column.features[image_column], Image):
        column = column.cast_column(image_column, Image(decode=False))
    sources: dict[str, ImageSource] = {}
    for batch in column.iter(batch_size=256):
        for source in batch[image_column]:
            sources.setdefault(image_key(source), source)
            if max_images is not None and len(sources) >= max_images:
                break
        if max_images is not None and len(sources) >= max_images:
            break
    distinct = list(sources.values())
    parts = []
    for start in range(0, len(distinct), batch_size):
        images = [
            load_image(source, where=f"image {start + k} of split {split!r}")
            for k, source in enumerate(distinct[start : start + batch_size])
        ]
        parts.append(features_of(model, processor, images, batch_size))
    logger.info("%d distinct images of %r encoded", len(distinct), split)
    return torch.cat(parts)


def fit_for_model(
    model: Any,
    processor: Any,
    dataset_dir: str | os.PathLike,
    train_split: str = "train",
    validation_split: str = "validation",
    max_images: int | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    batch_size: int = 32,
    image_column: str = "image",
) -> OODGuard:
    train = split_features(model, processor, dataset_dir, train_split, image_column, max_images, batch_size)
    validation = split_features(model, processor, dataset_dir, validation_split, image_column, max_images, batch_size)
    return OODGuard.fit(train, validation, percentile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retina_vqa.ood", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="Fit the guard for a saved model and save it in the model's folder.")
    fit.add_argument("--model_name_or_path", required=True, help="Folder saved by run_vqa.py; the guard goes there.")
    fit.add_argument("--dataset_dir", required=True, help="The DatasetDict (save_to_disk) the model was trained on.")
    fit.add_argument("--train_split", default="train", help="Images the density is fitted on.")
    fit.add_argument("--validation_split", default="validation", help="Images the threshold is set on.")
    fit.add_argument("--max_images", type=int, help="At most this many distinct images per split.")
    fit.add_argument(
        "--percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help="Threshold at this percentile of the validation images' scores (default 99: about 1%% flagged).",
    )
    fit.add_argument("--batch_size", type=int, default=32, help="Images per forward pass.")
    fit.add_argument("--device", help="cuda, cpu, ...; default: cuda if available.")
    fit.add_argument("--output_dir", help="Where to save the guard (default: the model folder).")
    return parser


def main(argv: Sequence[str] | None = None) -> OODGuard:
    from .inference import load_for_inference

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 2:
        parser.error(f"--max_images must be at least 2, got {args.max_images}.")
    if not 0 < args.percentile <= 100:
        parser.error(f"--percentile must be in (0, 100], got {args.percentile}.")
    model, processor = load_for_inference(args.model_name_or_path, device=args.device)
    try:
        guard = fit_for_model(
            model,
            processor,
            args.dataset_dir,
            args.train_split,
            args.validation_split,
            args.max_images,
            args.percentile,
            args.batch_size,
        )
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    output_dir = args.output_dir or args.model_name_or_path
    guard.save(output_dir)
    print(
        f"Out-of-distribution guard: {guard.num_train} training and {guard.num_validation} validation images, "
        f"{guard.feature_size} features, shrinkage {guard.shrinkage:.3f}, threshold {guard.threshold:.3f} "
        f"({guard.percentile:g}th percentile); saved to {output_dir}/{GUARD_CONFIG} and {GUARD_WEIGHTS}."
    )
    return guard


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
