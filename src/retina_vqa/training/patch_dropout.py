"""Patch dropout (``--patch_dropout``): the image encoder trains on a random part of each image's patches.

A ViT's cost grows with its tokens, and in this recipe the image encoder is most of a training step. PatchDropout
(Liu et al., "PatchDropout: Economizing Vision Transformers Using Patch Dropout", WACV 2023; the same idea as
FLIP's masking) keeps the ``[CLS]`` token and a random ``1 - rate`` of the patch tokens of every image, after
the position embeddings are added, so every kept token still knows where it lies: the encoder, the question
encoder reading its states and the image-level objective run on fewer tokens, and the model learns to read an
image from any part of it. Evaluation, prediction, Grad-CAM and the saved model see every patch: the dropout
is a forward hook on the image encoder's embeddings that acts only while the model is in training mode.

The draws come from torch's global generator, which the Trainer seeds and checkpoints, so a resumed run drops
the same patches as the uninterrupted one.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["attach_patch_dropout", "detach_patch_dropout", "drop_patches"]

# The hook's handle on the embeddings module while it is attached.
_HANDLE = "_retina_vqa_patch_dropout"


def drop_patches(embeddings: torch.Tensor, rate: float) -> torch.Tensor:
    """``[CLS]`` plus a random ``round((1 - rate) x patches)`` patch tokens of each image (batch x tokens x hidden),
    in their original order. At least one patch is always kept."""
    patches = embeddings.shape[1] - 1
    keep = max(1, round(patches * (1.0 - rate)))
    if keep >= patches:
        return embeddings
    scores = torch.rand(embeddings.shape[0], patches, device=embeddings.device)
    kept = scores.topk(keep, dim=1).indices.sort(dim=1).values + 1  # + 1: past [CLS]
    index = torch.cat([kept.new_zeros(embeddings.shape[0], 1), kept], dim=1)
    return embeddings.gather(1, index.unsqueeze(-1).expand(-1, -1, embeddings.shape[-1]))


def _embeddings_module(model: nn.Module) -> nn.Module:
    """The image encoder's embeddings (patch + position, ``[CLS]`` first): BLIP, BLIP-2 and InstructBLIP."""
    vision = getattr(model, "vision_model", None)
    embeddings = getattr(vision, "embeddings", None)
    if embeddings is None:
        raise ValueError(
            "--patch_dropout needs a ViT image encoder (model.vision_model.embeddings); this model has none. "
            "Drop --patch_dropout."
        )
    return embeddings


def attach_patch_dropout(model: nn.Module, rate: float) -> None:
    """Drop ``rate`` of each image's patch tokens in every training-mode forward of ``model``'s image encoder."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"--patch_dropout must be in [0, 1): the fraction of patches dropped, got {rate}.")
    embeddings = _embeddings_module(model)
    detach_patch_dropout(model)

    def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return drop_patches(output, rate) if module.training else output

    setattr(embeddings, _HANDLE, embeddings.register_forward_hook(hook))
    logger.info("Patch dropout: the image encoder trains on %.0f%% of each image's patches", 100 * (1 - rate))


def detach_patch_dropout(model: nn.Module) -> bool:
    """Remove the hook; True if there was one."""
    embeddings = getattr(getattr(model, "vision_model", None), "embeddings", None)
    handle = getattr(embeddings, _HANDLE, None)
    if handle is None:
        return False
    handle.remove()
    delattr(embeddings, _HANDLE)
    return True
