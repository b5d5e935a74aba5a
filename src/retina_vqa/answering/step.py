"""Answering one batch for one family: generate some rows, encode the others for ranking (`answer_rows`).

The one implementation of that step, used by the Trainer's evaluation (`training.trainer.VqaTrainer`) and by the
Python API (`inference.answer_planned`, behind ``python -m retina_vqa.predict`` and the web app). The batch is a
model-input dict as the collators build it:

* BLIP VQA (`layout` None): ``input_ids``, ``attention_mask`` and either ``image_embeds`` (the image encoder's
  outputs, one per distinct image) or ``pixel_values``, with ``image_index`` naming each row's image. The image
  encoder runs once for both kinds of rows.
* BLIP-2 / InstructBLIP: the prompt batch (`data.collator.PromptCollator`: image placeholders, prompt, pixels,
  InstructBLIP's Q-Former inputs); a training batch's ``labels`` (prompt + answer) are cut back to the prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.blip import encode_images, generate_answers
from ..models.blip2 import PromptLayout, generate_prompt_answers, prompt_only
from ..models.ranking import BlipPrefix, DecoderOnlyPrefix, EncoderDecoderPrefix, blip_prefix, prompt_prefix


@dataclass
class RowAnswers:
    """What `answer_rows` computed: the generated ids of ``generated_rows`` (None if there are none) and the encoded
    questions of ``ranked_rows`` (None if there are none), each in the order of its rows."""

    generated_rows: list[int]
    generated: torch.Tensor | None
    ranked_rows: list[int]
    prefix: BlipPrefix | EncoderDecoderPrefix | DecoderOnlyPrefix | None


def answer_rows(
    model: Any,
    layout: PromptLayout | None,
    inputs: dict[str, Any],
    ranked_rows: Sequence[int],
    generation_kwargs: dict[str, Any],
) -> RowAnswers:
    """Generate the answers of the batch's rows that are not in `ranked_rows`, and encode the questions of those
    that are (for `models.ranking.score_candidates`). `generation_kwargs` go to the family's generate
    (`models.blip.generate_answers` or `models.blip2.generate_prompt_answers`)."""
    input_ids = inputs["input_ids"]
    count, device = input_ids.shape[0], input_ids.device
    ranked = sorted(set(ranked_rows))
    generated_rows = [row for row in range(count) if row not in set(ranked)]
    generated_index = torch.tensor(generated_rows, dtype=torch.long, device=device)
    ranked_index = torch.tensor(ranked, dtype=torch.long, device=device)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    generated = prefix = None
    if layout is None:
        image_embeds = inputs.get("image_embeds")
        if image_embeds is None:
            image_embeds = encode_images(model, inputs["pixel_values"])
        image_index = inputs.get("image_index")
        if image_index is None:
            image_index = torch.arange(count, device=device)
        if generated_rows:
            generated = generate_answers(
                model,
                pixel_values=None,
                image_embeds=image_embeds,
                image_index=image_index[generated_index],
                input_ids=input_ids[generated_index],
                attention_mask=attention_mask[generated_index],
                **generation_kwargs,
            )
        if ranked:
            prefix = blip_prefix(
                model,
                input_ids[ranked_index],
                attention_mask[ranked_index],
                image_embeds=image_embeds,
                image_index=image_index[ranked_index],
            )
        return RowAnswers(generated_rows, generated, ranked, prefix)
    batch = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (count,)}
    if generated_rows:
        generated = generate_prompt_answers(
            model, layout, **{k: v[generated_index] for k, v in batch.items()}, **generation_kwargs
        )
    if ranked:
        prompts = batch
        if layout.decoder_only and "labels" in batch:  # prompt + answer: the prompts, left-padded
            ids, mask = prompt_only(input_ids, attention_mask, batch["labels"], layout.pad_token_id)
            prompts = {**batch, "input_ids": ids, "attention_mask": mask}
        prefix = prompt_prefix(model, layout, **{k: v[ranked_index] for k, v in prompts.items()})
    return RowAnswers(generated_rows, generated, ranked, prefix)
