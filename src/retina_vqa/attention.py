"""Attention fixes for BLIP's text transformer.

In transformers 5.x, `BlipTextAttention.forward` hands the cross-attention mask to its inner
`BlipTextSelfAttention` as ``attention_mask``, but the inner module reads the cross-attention mask from
``encoder_attention_mask``, which is never passed. Every cross-attention therefore runs unmasked. For
the question encoder this is harmless (it attends to image patches, all valid). For the answer decoder
it is not: it attends to the padding of shorter questions, in training and in generation, so an answer
depends on how long the other questions in its batch are.

`apply_cross_attention_mask_fix` swaps the class of each cross-attention module for a subclass that
forwards the mask it was given. The weights and the state dict are unchanged, so a saved model loads in
plain transformers as before.
"""

from __future__ import annotations

import torch
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention


class MaskedBlipTextSelfAttention(BlipTextSelfAttention):
    """`BlipTextSelfAttention` that uses the mask it is called with for cross-attention too."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is not None and encoder_attention_mask is None:
            encoder_attention_mask = attention_mask
        return super().forward(
            hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **kwargs,
        )


def apply_cross_attention_mask_fix(model: torch.nn.Module) -> int:
    """Patch every BLIP text cross-attention in `model` in place; returns how many were patched."""
    patched = 0
    for name, module in model.named_modules():
        if type(module) is BlipTextSelfAttention and name.endswith("crossattention.self"):
            module.__class__ = MaskedBlipTextSelfAttention
            patched += 1
    return patched
