"""Pixel values of a batch of images: what the model's image processor returns, made in one step where possible.

transformers' PIL image processors (BLIP, BLIP-2 and InstructBLIP use one when torchvision is not installed) resize,
rescale and normalise each image on its own, through several copies per image; in a training step of the small
demo model that was about a tenth of the time. `pixel_values` resizes each image with the processor's own filter
and does the rest on the whole batch at once, with the processor's arithmetic (rescaled in float64, normalised in
float32): the result is bit for bit the processor's. Any other processor, or a setting this does not reproduce
(centre crop, padding, a size other than height x width, ...), goes through the processor itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..models.compat import PilBackend

__all__ = ["pixel_values"]


@dataclass(frozen=True)
class _Plan:
    height: int
    width: int
    resample: int
    scale: float
    mean: torch.Tensor
    std: torch.Tensor


def _plan(image_processor: Any) -> _Plan | None:
    """What the processor does, when it is a PIL processor that only resizes to height x width, rescales and
    normalises; otherwise None."""
    if not isinstance(image_processor, PilBackend):  # a torchvision processor batches by itself
        return None
    p = image_processor
    size = p.size if isinstance(p.size, dict) else getattr(p.size, "__dict__", {})
    if set(k for k, v in size.items() if v is not None) != {"height", "width"}:
        return None
    if not (p.do_resize and p.do_rescale and p.do_normalize and getattr(p, "do_convert_rgb", True)):
        return None
    if getattr(p, "do_center_crop", False) or getattr(p, "do_pad", False):
        return None
    mean, std = (np.broadcast_to(np.asarray(v, dtype=np.float32), (3,)) for v in (p.image_mean, p.image_std))
    return _Plan(
        height=int(size["height"]),
        width=int(size["width"]),
        resample=int(p.resample) if p.resample is not None else int(Image.Resampling.BILINEAR),
        scale=float(p.rescale_factor),
        mean=torch.from_numpy(mean.copy()).view(1, 3, 1, 1),
        std=torch.from_numpy(std.copy()).view(1, 3, 1, 1),
    )


def pixel_values(image_processor: Any, images: list[Image.Image]) -> torch.Tensor:
    """``image_processor(images=images, return_tensors="pt")["pixel_values"]``, batched where it can be (see above)."""
    plan = _plan(image_processor)
    if plan is None or not images or any(not isinstance(im, Image.Image) or im.mode != "RGB" for im in images):
        return image_processor(images=images, return_tensors="pt")["pixel_values"]
    target = (plan.width, plan.height)
    array = np.stack(
        [np.asarray(im if im.size == target else im.resize(target, resample=plan.resample)) for im in images]
    )
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).to(torch.float64).mul_(plan.scale).to(torch.float32)
    return ((pixels - plan.mean) / plan.std).contiguous()
