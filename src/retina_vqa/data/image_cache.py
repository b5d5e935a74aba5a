"""Decoded images kept between batches, so that an image is decoded once, not in every batch it appears in.

Training batches hold each image's questions in short runs (`data.sampling`, ``--max_questions_per_image``), so an
image of 13 questions is in about 7 batches of every epoch, and in every epoch: decoding it each time was about a
tenth of the demo model's training step. `DecodedImageCache` keeps the RGB images `data.images.load_image` returns,
by image key (`data.image_keys`: the same pixels have the same key), up to a budget of pixel bytes; the collators
(`data.collator`) look there before decoding. The pixels are the decoded ones, bit for bit: augmentation and the
image processor work on them as before, and never in place.

Each DataLoader worker keeps its own cache (a copy made when the worker starts; pickling hands a worker an empty
one), so `per_process` divides a process's budget among its workers. Images past the budget are decoded each time,
as without a cache: the first ones to arrive stay (with a shuffled order every image is as likely to be among them,
and no eviction means no churn).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from PIL import Image

__all__ = ["DecodedImageCache"]


class DecodedImageCache:
    """RGB images by key, at most ``max_bytes`` of pixels (width x height x 3 each).

    Example::

        cache = DecodedImageCache(max_bytes=10**9)
        image = cache.get(key)
        if image is None:
            image = load_image(source)
            cache.add(key, image)
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0: keep nothing), got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self._images: dict[Hashable, Image.Image] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    @classmethod
    def per_process(cls, gigabytes: float, num_workers: int) -> DecodedImageCache | None:
        """The cache of one training process's collator: ``gigabytes`` shared by its ``num_workers`` DataLoader
        workers (each keeps its own copy; 0 workers: the process itself); None when ``gigabytes`` is 0."""
        if gigabytes < 0:
            raise ValueError(f"The decoded-image budget must be >= 0 GB (0: no cache), got {gigabytes}.")
        if gigabytes == 0:
            return None
        return cls(int(gigabytes * 10**9) // max(1, num_workers))

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._images

    def get(self, key: Hashable) -> Image.Image | None:
        """The image stored under ``key``, or None (counted as a miss)."""
        image = self._images.get(key)
        if image is None:
            self.misses += 1
        else:
            self.hits += 1
        return image

    def add(self, key: Hashable, image: Image.Image) -> bool:
        """Keep ``image`` under ``key`` if the budget allows; whether it is kept (an RGB image only)."""
        if key in self._images:
            return True
        if image.mode != "RGB":
            return False
        size = image.width * image.height * 3
        if self.nbytes + size > self.max_bytes:
            return False
        image.load()  # the pixels themselves, not a lazily decoded file
        self._images[key] = image
        self.nbytes += size
        return True

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader worker started by pickling (spawn) gets the budget, not the images: it fills its own.
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])

    def __repr__(self) -> str:
        return (
            f"DecodedImageCache({len(self)} images, {self.nbytes / 1e6:.1f} of {self.max_bytes / 1e6:.1f} MB, "
            f"{self.hits} hits, {self.misses} misses)"
        )
