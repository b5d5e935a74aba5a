"""Training order that keeps the questions of one image together, so each batch encodes an image once.

A VQA dataset repeats every image once per question (13 times in synthetic RetinaVQA, 5 in the user's
data). Batched in random order, the image encoder runs once per question: for the same pixels, the
same forward and backward pass, 5-13 times. `ImageGroupedSampler` shuffles the images and yields all
rows of an image consecutively (in random order among themselves); the collator then sends each
distinct image of a batch once and `image_index` maps the questions to it. The gradient is the same
sum over questions; only the work is not repeated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ImageGroupedSampler(Sampler[int]):
    """Row indices, image by image in a random order that depends only on (seed, epoch)."""

    def __init__(self, image_keys: Sequence[str], seed: int = 0) -> None:
        groups: dict[str, list[int]] = {}
        for row, key in enumerate(image_keys):
            groups.setdefault(key, []).append(row)
        self.groups = list(groups.values())
        self.num_rows = len(image_keys)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for group in torch.randperm(len(self.groups), generator=generator).tolist():
            rows = self.groups[group]
            for position in torch.randperm(len(rows), generator=generator).tolist():
                yield rows[position]
