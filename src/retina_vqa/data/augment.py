"""Training-time image augmentation of fundus photographs (``--augment``), for models that must travel to other cameras.

This module owns what a training batch's images go through before the image processor: a random colour change
(brightness, contrast, saturation and per-channel gains), a random illumination change (a radial fall-off from a
point near the centre, or a linear gradient across the field), a random scale around the centre (the field seen from
85% of the area, zoomed in, to 150%, zoomed out with black around, as cameras frame the retina differently) and a
small rotation (up to 10 degrees, black fill, as fundus photographs have black surrounds), and, for
images whose questions allow it, a horizontal flip. Every change keeps black black.

Flips swap a left eye for a right one: an image is flipped only when the batch's question types are known and none
of its rows in the batch is a laterality question (``ORIENTATION_QUESTION_TYPES``); rows without a question type
never flip. Each distinct image is augmented once per batch (`augment_batch`), so all of its questions see the same
pixels. The collators (`data.collator`) call it for training batches only: evaluation and prediction see the images
as they are (`training.evaluation.build_train_collator` gives the Trainer a separate training collator).

Draws come from a generator of the augmentation's own, keyed by the run's seed, the process and the DataLoader
worker (whose seed torch derives from the Trainer's seeded generator each epoch): the same seed gives the same
pixels, and the model's own random stream (dropout) is not touched. A resumed run draws a new stream from the
resume on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image, ImageOps

__all__ = ["ORIENTATION_QUESTION_TYPES", "FundusAugmentation", "augment_batch", "describe", "may_flip"]

# Question types whose answer changes when the image is mirrored: never asked of a flipped image.
ORIENTATION_QUESTION_TYPES = frozenset({"laterality"})


def may_flip(question_types: Sequence[str | None]) -> bool:
    """Whether an image whose rows in the batch have these question types may be mirrored: the types are all known
    (a row without one could be asking anything) and none of them is an orientation question."""
    return bool(question_types) and all(t is not None and t not in ORIENTATION_QUESTION_TYPES for t in question_types)


@dataclass
class FundusAugmentation:
    """Random colour, illumination, scale, rotation and (where allowed) flip of one fundus photograph at a time.

    The defaults (trailing comments: why) are mild: each change stays within what two cameras or two sessions of
    one camera differ by, so the grade the image shows does not change.
    """

    seed: int = 0
    process_index: int = 0
    brightness: float = 0.25  # gain in [0.75, 1.25]: exposure differs between cameras and operators
    contrast: float = 0.25  # gamma in [0.8, 1.25] (1/1.25): keeps black black, unlike contrast about the mean
    saturation: float = 0.25  # blend towards / away from grey by up to 25%
    channel_gain: float = 0.08  # each of R, G, B by up to 8%: the "hue" of a colour cast, as cameras differ
    illumination: float = 0.35  # radial fall-off up to 35% at the rim, or a gradient of up to +-17.5% across
    min_area: float = 0.85  # the field seen: 85% of the image (zoom in) ...
    max_area: float = 1.5  # ... to 150% (zoom out, black around): cameras frame the retina differently (widefield)
    max_rotation: float = 10.0  # degrees; fundus photographs are taken with the head upright, +-10 covers the tilt
    flip_probability: float = 0.5  # horizontal flip of images no laterality question is asked about
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False, compare=False)
    _owner: tuple[int, int | None] | None = field(default=None, init=False, repr=False, compare=False)
    last_flipped: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.min_area <= 1.0 <= self.max_area:
            raise ValueError(f"need 0 < min_area <= 1 <= max_area, got {self.min_area} and {self.max_area}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")

    def generator(self) -> np.random.Generator:
        """This process's (and DataLoader worker's) generator, made on first use there."""
        worker = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if worker is None else worker.id)
        if self._rng is None or self._owner != owner:
            # A worker's seed is drawn by torch from the Trainer's seeded generator, anew each epoch (or once, with
            # persistent workers); without workers the collator's generator lives in the training process.
            key = [self.seed, self.process_index] + ([] if worker is None else [worker.seed])
            self._rng = np.random.default_rng(key)
            self._owner = owner
        return self._rng

    def __call__(self, image: Image.Image, flip_allowed: bool = False) -> Image.Image:
        """One random version of ``image`` (RGB); mirrored only when ``flip_allowed`` (``last_flipped`` says whether
        it was)."""
        image, self.last_flipped = self.apply_with_flip(image, self.generator(), flip_allowed)
        return image

    def apply(self, image: Image.Image, rng: np.random.Generator, flip_allowed: bool = False) -> Image.Image:
        """``image`` augmented with draws from ``rng``, always the same number of them whatever is allowed."""
        return self.apply_with_flip(image, rng, flip_allowed)[0]

    def apply_with_flip(
        self, image: Image.Image, rng: np.random.Generator, flip_allowed: bool = False
    ) -> tuple[Image.Image, bool]:
        """`apply`, and whether the image was mirrored."""
        image = image.convert("RGB")
        width, height = image.size
        # Draws first, in a fixed order.
        flip = rng.random() < self.flip_probability
        area = rng.uniform(self.min_area, self.max_area)
        shift = rng.uniform(-1.0, 1.0, 2)
        angle = math.radians(rng.uniform(-self.max_rotation, self.max_rotation))
        brightness = rng.uniform(1.0 - self.brightness, 1.0 + self.brightness)
        gamma = math.exp(rng.uniform(-math.log(1.0 + self.contrast), math.log(1.0 + self.contrast)))
        saturation = rng.uniform(1.0 - self.saturation, 1.0 + self.saturation)
        gains = rng.uniform(1.0 - self.channel_gain, 1.0 + self.channel_gain, 3)
        radial = rng.random() < 0.5
        strength = rng.uniform(0.0, self.illumination)
        direction = rng.uniform(0.0, 2.0 * math.pi)
        offset = rng.uniform(-0.15, 0.15, 2)

        if flip and flip_allowed:
            image = ImageOps.mirror(image)
        # Scale and rotation in one resampling: output pixel -> input pixel (PIL's affine is the inverse map).
        side = math.sqrt(area)
        # Zoomed in, the window moves within the image; zoomed out, the smaller image moves within the frame.
        cx = width / 2.0 + shift[0] * abs(1.0 - side) * width / 2.0
        cy = height / 2.0 + shift[1] * abs(1.0 - side) * height / 2.0
        cos, sin = math.cos(angle) * side, math.sin(angle) * side
        ox, oy = width / 2.0, height / 2.0
        inverse = (cos, -sin, cx - cos * ox + sin * oy, sin, cos, cy - sin * ox - cos * oy)
        image = image.transform(
            (width, height), Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
        )

        img = np.asarray(image, np.float32) / 255.0
        img = img**gamma * brightness
        grey = img.mean(axis=2, keepdims=True)
        img = grey + (img - grey) * saturation
        img *= gains.astype(np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        u = (xx + 0.5) / width - 0.5 - offset[0]
        v = (yy + 0.5) / height - 0.5 - offset[1]
        if radial:
            light = 1.0 - strength * np.clip((u * u + v * v) / 0.25, 0.0, 1.0)
        else:
            light = 1.0 + strength * (u * math.cos(direction) + v * math.sin(direction))
        img *= light[..., None]
        return Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB"), bool(
            flip and flip_allowed
        )


def augment_batch(
    augmentation: FundusAugmentation,
    images: Sequence[Image.Image],
    image_keys: Sequence[Hashable],
    row_keys: Sequence[Hashable],
    row_question_types: Sequence[str | None] | None,
    flipped: set[Hashable] | None = None,
) -> list[Image.Image]:
    """A batch's decoded images, each distinct image augmented once.

    ``images[j]`` is the image of key ``image_keys[j]`` (a key may repeat when a collator decodes an image per row:
    every copy gets the same pixels); ``row_keys[i]`` and ``row_question_types[i]`` are the image key and question
    type of row ``i`` of the batch (None: the data has no question types, so nothing is flipped). The keys of the
    images that were mirrored are added to ``flipped`` when given.
    """
    types_of: dict[Hashable, list[str | None]] = {}
    for i, key in enumerate(row_keys):
        types_of.setdefault(key, []).append(None if row_question_types is None else row_question_types[i])
    done: dict[Hashable, Image.Image] = {}
    out = []
    for image, key in zip(images, image_keys, strict=True):
        if key not in done:
            done[key] = augmentation(image, flip_allowed=may_flip(types_of.get(key, [None])))
            if flipped is not None and getattr(augmentation, "last_flipped", False):
                flipped.add(key)
        out.append(done[key])
    return out


def describe(augmentation: Any) -> str:
    """One line for the log: what ``--augment`` does with these settings."""
    a = augmentation
    return (
        f"brightness +-{a.brightness:.0%}, contrast (gamma) +-{a.contrast:.0%}, saturation +-{a.saturation:.0%}, "
        f"channel gains +-{a.channel_gain:.0%}, illumination up to {a.illumination:.0%}, "
        f"field {a.min_area:.0%}-{a.max_area:.0%} of the area, rotation +-{a.max_rotation:g} deg, "
        f"flip p={a.flip_probability:g} (never with a laterality row)"
    )
