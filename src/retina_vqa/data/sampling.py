"""Training order that keeps some questions of one image together, so a batch encodes an image once for them.

A VQA dataset repeats every image once per question (13 times in synthetic RetinaVQA, 5 in the user's
data). Batched in random order, the image encoder runs once per question: for the same pixels, the
same forward and backward pass, 5-13 times. `ImageGroupedSampler` shuffles the images and yields rows of an
image consecutively (in random order among themselves); the collator then sends each distinct image of a
batch once and `image_index` maps the questions to it.

Over an epoch the gradient sums over the same questions as random order; per step it does not: a batch of
64 that holds all 13 questions of each image covers ~5 images instead of ~64, so each step sees less
image variety. ``max_questions_per_image`` bounds that: an image's rows are cut into runs of at most that
many, and the runs (not the images) are shuffled, so a batch of B questions covers about B / k images.
bench/README.md ("Image grouping and accuracy") has the measured trade-off behind the default.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ImageGroupedSampler(Sampler[int]):
    """Row indices in runs of one image's rows (at most ``max_questions_per_image`` long, ``None``: all of them),
    the runs in a random order that depends only on (seed, epoch)."""

    def __init__(self, image_keys: Sequence[str], seed: int = 0, max_questions_per_image: int | None = None) -> None:
        if max_questions_per_image is not None and max_questions_per_image < 1:
            raise ValueError(f"max_questions_per_image must be at least 1 (or None), got {max_questions_per_image}.")
        groups: dict[str, list[int]] = {}
        for row, key in enumerate(image_keys):
            groups.setdefault(key, []).append(row)
        self.groups = list(groups.values())
        self.num_rows = len(image_keys)
        self.seed = seed
        self.epoch = 0
        self.max_questions_per_image = max_questions_per_image

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        step = self.max_questions_per_image
        runs = []
        for group in torch.randperm(len(self.groups), generator=generator).tolist():
            rows = self.groups[group]
            shuffled = [rows[position] for position in torch.randperm(len(rows), generator=generator).tolist()]
            if step is None:
                runs.append(shuffled)
            else:
                runs += [shuffled[start : start + step] for start in range(0, len(shuffled), step)]
        if step is not None:  # the runs of one image land in different batches
            runs = [runs[i] for i in torch.randperm(len(runs), generator=generator).tolist()]
        for run in runs:
            yield from run
