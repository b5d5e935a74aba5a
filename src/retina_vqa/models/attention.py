"""Attention for BLIP: the cross-attention mask fix, and a fused (SDPA) path for every attention.

**Mask fix.** In transformers 5.x, `BlipTextAttention.forward` hands the cross-attention mask to its inner
`BlipTextSelfAttention` as ``attention_mask``, but the inner module reads the cross-attention mask from
``encoder_attention_mask``, which is never passed. Every cross-attention therefore runs unmasked. For
the question encoder this is harmless (it attends to image patches, all valid). For the answer decoder
it is not: it attends to the padding of shorter questions, in training and in generation, so an answer
depends on how long the other questions in its batch are. `apply_cross_attention_mask_fix` swaps the
class of each cross-attention module for a subclass that forwards the mask it was given.

**Fused attention.** BLIP in transformers has eager attention only: scores, softmax and the weighted sum
as separate matrix products, with the probabilities kept for the backward pass. `set_attention_implementation
(model, "sdpa")` swaps the vision encoder's `BlipAttention` and every text self- and cross-attention for
subclasses that call `torch.nn.functional.scaled_dot_product_attention` with the same additive masks (flash /
memory-efficient kernels where the device has them). Same weights, same state dict, same outputs up to
floating-point rounding (tests/models/test_attention.py: logits and gradients within 1e-4 of eager in fp32). The
fused modules return no attention probabilities: code that reads them (``output_attentions``, Grad-CAM in
`retina_vqa.explain`) uses ``"eager"``.

**Keys and values once per image.** When several questions of a batch are about one image, the question
encoder's cross-attention projects that image's patch states to keys and values once per question: at the demo's
65 image tokens against ~11 question tokens these projections are nearly half the question encoder's arithmetic,
and at blip-vqa-base's 577 image tokens several times the rest of it (bench/question_encoder.py). Inside
`shared_encoder_rows(rows)` a fused cross-attention given ``states`` (one row per distinct image) projects each row
once and hands query row ``i`` the keys and values of ``states[rows[i]]``: the same numbers as projecting
``states[rows]``, and gradients summed over the questions of an image, as the projection of the repeated rows
would give them.

Both are class swaps of existing modules, so a saved model is plain `BlipForQuestionAnswering` and loads in
transformers as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn import functional as F

from .compat import BlipAttention, BlipTextSelfAttention, EncoderDecoderCache

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


class MaskedBlipTextSelfAttention(BlipTextSelfAttention):
    """`BlipTextSelfAttention` that uses the mask it is called with for cross-attention too."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # The one mask this attention applies: a cross-attention's encoder mask where one is passed, else (the fix)
        # the mask it was called with.
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            attention_mask = encoder_attention_mask
        return self._attend(hidden_states, attention_mask, encoder_hidden_states, **kwargs)

    def _attend(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # transformers' own attention. It reads a cross-attention's mask from `encoder_attention_mask` and a
        # self-attention's from `attention_mask`: both get the one chosen in `forward`.
        return super().forward(
            hidden_states,
            attention_mask=mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=mask,
            **kwargs,
        )


def _additive_mask(mask: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor | None:
    """BLIP's additive float mask in the query's dtype (SDPA requires it), large negatives kept finite."""
    if mask is None or mask.dtype == query.dtype:
        return mask
    if mask.is_floating_point():
        # The model's mask holds finfo(float32).min: clamp before a cast to fp16 turns it into -inf.
        mask = mask.clamp(min=torch.finfo(query.dtype).min)
    return mask.to(query.dtype)


class SdpaBlipAttention(BlipAttention):
    """The vision encoder's attention (no mask) through `scaled_dot_product_attention`."""

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
        batch, length, embed_dim = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(
            qkv[0],
            qkv[1],
            qkv[2],
            dropout_p=self.dropout.p if self.training else 0.0,
            scale=self.scale,
        )
        context = context.transpose(1, 2).reshape(batch, length, embed_dim)
        return self.projection(context), None


# The rows set by `shared_encoder_rows`, per thread (a stack: blocks may nest).
_SHARED_ROWS = threading.local()


@contextmanager
def shared_encoder_rows(rows: torch.Tensor) -> Iterator[None]:
    """Within this block, a fused cross-attention answers query row ``i`` with the keys and values of row
    ``rows[i]`` of its encoder states (one row per distinct image), projecting each of those rows once.

    Wrap one text model call only: every cross-attention run inside reads its states this way. Only
    `SdpaBlipTextSelfAttention` honours it (transformers' eager attention would fail on the row count), and only
    while the block runs: an activation-checkpointed layer recomputed in the backward pass would not see it
    (`models.blip.encode_questions` checks both with `cross_attention_shares_rows`). The rows are found by
    thread, not by the states' identity: wrappers such as FSDP hand the layers copies of their inputs.
    """
    stack = _SHARED_ROWS.__dict__.setdefault("stack", [])
    stack.append(rows)
    try:
        yield
    finally:
        stack.pop()


def _shared_rows() -> torch.Tensor | None:
    """The rows of the innermost `shared_encoder_rows` block running in this thread, else None."""
    stack = getattr(_SHARED_ROWS, "stack", None)
    return stack[-1] if stack else None


class SdpaBlipTextSelfAttention(MaskedBlipTextSelfAttention):
    """Text self- or cross-attention through `scaled_dot_product_attention`, masks and cache as upstream.

    Inherits the cross-attention mask fix of `MaskedBlipTextSelfAttention` (its `forward` picks the mask) and
    replaces only the attention itself (`_attend`).
    """

    def _attend(
        self,
        hidden_states: torch.Tensor,
        mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        cache = cache if cache is not None else past_key_values
        is_cross_attention = encoder_hidden_states is not None
        input_shape = hidden_states.shape[:-1]
        query = self.query(hidden_states).view(*input_shape, -1, self.attention_head_size).transpose(1, 2)

        # Keys and values, from the cache where upstream takes them from it (same logic as BlipTextSelfAttention).
        cached, is_updated = cache, False
        if cache is not None and isinstance(cache, EncoderDecoderCache):
            is_updated = cache.is_updated.get(self.layer_idx)
            cached = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
        if is_cross_attention and cache is not None and is_updated:
            key = cached.layers[self.layer_idx].keys
            value = cached.layers[self.layer_idx].values
        else:
            states = encoder_hidden_states if is_cross_attention else hidden_states
            key, value = self.key(states), self.value(states)
            rows = _shared_rows() if is_cross_attention else None
            if rows is not None:  # one projection per distinct image, handed to each of its questions
                if rows.shape[0] != query.shape[0]:
                    raise ValueError(
                        f"shared_encoder_rows: {rows.shape[0]} rows for a batch of {query.shape[0]} queries"
                    )
                key, value = key.index_select(0, rows), value.index_select(0, rows)
            kv_shape = (*key.shape[:-1], -1, self.attention_head_size)
            key = key.view(kv_shape).transpose(1, 2)
            value = value.view(kv_shape).transpose(1, 2)
            if cache is not None:
                key, value = cached.update(key, value, self.layer_idx, kwargs=kwargs)
                if is_cross_attention and isinstance(cache, EncoderDecoderCache):
                    cache.is_updated[self.layer_idx] = True

        context = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=_additive_mask(mask, query),
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        context = context.transpose(1, 2).reshape(*input_shape, self.all_head_size)
        return context, None


def apply_cross_attention_mask_fix(model: torch.nn.Module) -> int:
    """Patch every BLIP text cross-attention in `model` in place; returns how many were patched."""
    patched = 0
    for name, module in model.named_modules():
        if type(module) is BlipTextSelfAttention and name.endswith("crossattention.self"):
            module.__class__ = MaskedBlipTextSelfAttention
            patched += 1
    return patched


def set_attention_implementation(model: torch.nn.Module, implementation: str) -> int:
    """Run every BLIP attention of `model` as ``"sdpa"`` (fused) or ``"eager"`` (transformers' own).

    Applies the cross-attention mask fix as well, in both modes. Returns the number of attention modules
    switched. Idempotent; the weights are untouched.
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown attention implementation {implementation!r}: use one of {', '.join(ATTENTION_IMPLEMENTATIONS)}."
        )
    apply_cross_attention_mask_fix(model)
    switched = 0
    for name, module in model.named_modules():
        kind = type(module)
        if implementation == "sdpa":
            if kind is BlipAttention:
                module.__class__ = SdpaBlipAttention
            elif kind in (BlipTextSelfAttention, MaskedBlipTextSelfAttention):
                module.__class__ = SdpaBlipTextSelfAttention
            else:
                continue
        else:
            if kind is SdpaBlipAttention:
                module.__class__ = BlipAttention
            elif kind is SdpaBlipTextSelfAttention:
                cross = name.endswith("crossattention.self")
                module.__class__ = MaskedBlipTextSelfAttention if cross else BlipTextSelfAttention
            else:
                continue
        switched += 1
    return switched


def cross_attention_shares_rows(text_model: torch.nn.Module) -> bool:
    """Whether every cross-attention of ``text_model`` honours `shared_encoder_rows` in this call: all fused, and
    none recomputed later by activation checkpointing (which would run outside the block) or traced by
    ``torch.compile``."""
    if torch.compiler.is_compiling():
        return False
    fused = 0
    for name, module in text_model.named_modules():
        if getattr(module, "gradient_checkpointing", False):
            return False
        if name.endswith("crossattention.self"):
            if type(module) is not SdpaBlipTextSelfAttention:
                return False
            fused += 1
    return fused > 0


def attention_implementation(model: torch.nn.Module) -> str:
    """``"sdpa"`` if the model's attention modules are the fused ones, else ``"eager"``."""
    kinds = {type(m) for m in model.modules()}
    return "sdpa" if SdpaBlipAttention in kinds or SdpaBlipTextSelfAttention in kinds else "eager"
