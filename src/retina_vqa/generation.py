"""Answer generation that respects question padding, so a batch gives the same answers as one by one.

`BlipForQuestionAnswering.generate` in transformers builds an all-ones mask over the encoded question
before handing it to the decoder's cross-attention. In a padded batch the decoder then attends to the
padding positions of shorter questions, and batched answers differ from one-at-a-time answers. Here the
real question mask goes to the decoder, as in BLIP's own code.
"""

from __future__ import annotations

import torch
from transformers import BlipForQuestionAnswering


@torch.no_grad()
def generate_answers(
    model: BlipForQuestionAnswering,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    interpolate_pos_encoding: bool = False,
    **generate_kwargs,
) -> torch.LongTensor:
    """Generated answer ids, starting with ``[DEC]`` and ending at ``[SEP]`` (then padding).

    `generate_kwargs` go to the decoder's `generate` (``max_length``, ``max_new_tokens``, ``num_beams``, ...).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    vision_outputs = model.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
    image_embeds = vision_outputs.last_hidden_state
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    question_embeds = model.text_encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask,
    ).last_hidden_state
    text_config = model.config.text_config
    start = torch.full((input_ids.shape[0], 1), model.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    generate_kwargs.setdefault("eos_token_id", text_config.sep_token_id)
    generate_kwargs.setdefault("pad_token_id", text_config.pad_token_id)
    return model.text_decoder.generate(
        input_ids=start,
        encoder_hidden_states=question_embeds,
        encoder_attention_mask=attention_mask,
        **generate_kwargs,
    )
