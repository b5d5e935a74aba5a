"""Image-encoder outputs kept per image when the image encoder is frozen.

A frozen image encoder maps an image to the same patch states in every epoch (it has no dropout), yet a
training run encodes every image again each epoch, and again at each evaluation. With
``--freeze_vision_encoder --cache_image_embeddings`` the Trainer encodes an image the first time it
appears, keeps the states in CPU memory under the image's content key (`data.image_keys`), and hands the
model the kept states afterwards: the image encoder runs once per distinct image per run. The memory is
bounded (``--image_embedding_cache_gb``); once full, new images are encoded every time, as without the
cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..models.blip import encode_images

logger = logging.getLogger(__name__)


class ImageEmbeddingCache:
    """Image-encoder outputs by image key, in CPU memory, up to ``max_bytes``.

    When full, new outputs are not kept (``evict=False``: right for training epochs, which come back to every
    image in turn) or the oldest are dropped (``evict=True``: right for an evaluation in `answering_order`,
    which finishes with a chunk of images before it moves on).
    """

    def __init__(self, max_bytes: int, evict: bool = False) -> None:
        if max_bytes <= 0:
            raise ValueError(f"The image embedding cache needs a positive size, got {max_bytes} bytes.")
        self.max_bytes = max_bytes
        self.evict = evict
        self.stored: dict[str, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.full = False

    def __len__(self) -> int:
        return len(self.stored)

    @torch.no_grad()
    def encode(
        self,
        model: torch.nn.Module,
        pixel_values: torch.Tensor,
        keys: Sequence[str],
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """The image encoder's output for each image of the batch: kept ones from memory, the others
        computed (only those) and kept. ``keys[i]`` identifies the image of ``pixel_values[i]``."""
        if len(keys) != pixel_values.shape[0]:
            raise ValueError(f"{len(keys)} image keys for {pixel_values.shape[0]} images.")
        missing = [i for i, key in enumerate(keys) if key not in self.stored]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            index = torch.tensor(missing, device=pixel_values.device)
            encoded = encode_images(model, pixel_values.index_select(0, index), interpolate_pos_encoding)
            for row, i in enumerate(missing):
                fresh[i] = encoded[row]
                self._keep(keys[i], encoded[row])
        device = pixel_values.device
        return torch.stack(
            [fresh[i] if i in fresh else self.stored[key].to(device, non_blocking=True) for i, key in enumerate(keys)]
        )

    def _keep(self, key: str, states: torch.Tensor) -> None:
        size = states.numel() * states.element_size()
        while self.evict and self.stored and self.bytes + size > self.max_bytes:
            oldest = next(iter(self.stored))
            self.bytes -= self.stored[oldest].numel() * self.stored[oldest].element_size()
            del self.stored[oldest]
        if self.bytes + size > self.max_bytes:
            if not self.full:
                logger.warning(
                    "Image embedding cache full at %d images (%.2f GB): further images are encoded every time. "
                    "Raise --image_embedding_cache_gb to keep them all.",
                    len(self.stored),
                    self.bytes / 1e9,
                )
                self.full = True
            return
        self.stored[key] = states.detach().to("cpu", copy=True)
        self.bytes += size

    def stats(self) -> dict[str, float | int]:
        """Counts for the run's metrics: images kept, image-encoder passes saved and done, memory."""
        return {
            "image_embeddings_kept": len(self.stored),
            "image_encoder_passes_saved": self.hits,
            "image_encoder_passes": self.misses,
            "image_embedding_cache_gb": round(self.bytes / 1e9, 4),
        }
