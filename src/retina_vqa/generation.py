"""Answer generation that respects question padding, so a batch gives the same answers as one by one.

`BlipForQuestionAnswering.generate` in transformers builds an all-ones mask over the encoded question
before handing it to the decoder's cross-attention. In a padded batch the decoder then attends to the
padding positions of shorter questions, and batched answers differ from one-at-a-time answers. Here the
real question mask goes to the decoder, as in BLIP's own code.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from transformers import BlipForQuestionAnswering


def encode_questions(
    model: BlipForQuestionAnswering, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The question encoder reading the image patches: the token states the answer decoder attends to."""
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    return model.text_encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask,
    ).last_hidden_state


def encode_images(
    model: BlipForQuestionAnswering, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
) -> torch.Tensor:
    """The image encoder's patch states (batch x patches + 1 x hidden) that the question encoder reads."""
    return model.vision_model(
        pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
    ).last_hidden_state


@torch.no_grad()
def generate_answers(
    model: BlipForQuestionAnswering,
    pixel_values: torch.Tensor | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    interpolate_pos_encoding: bool = False,
    image_index: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    **generate_kwargs,
) -> torch.LongTensor:
    """Generated answer ids, starting with ``[DEC]`` and ending at ``[SEP]`` (then padding).

    With ``image_index``, ``pixel_values`` holds each distinct image once and question i is about image
    ``image_index[i]``. Instead of pixels, ``image_embeds`` from `encode_images` may be given (encoded once,
    answered in several batches); ``image_index`` then indexes them. `generate_kwargs` go to the decoder's
    `generate` (``max_length``, ``max_new_tokens``, ``num_beams``, ...).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if (pixel_values is None) == (image_embeds is None):
        raise ValueError("Pass either pixel_values or image_embeds.")
    if image_embeds is None:
        image_embeds = encode_images(model, pixel_values, interpolate_pos_encoding)
    else:  # kept outputs may come from a mixed-precision pass
        image_embeds = image_embeds.to(next(model.text_encoder.parameters()).dtype)
    if image_index is not None:  # each distinct image encoded once (see collator.VqaCollator)
        image_embeds = image_embeds.index_select(0, image_index)
    question_embeds = encode_questions(model, image_embeds, input_ids, attention_mask)
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


def answering_plan(
    image_keys: Sequence[Hashable], questions: Sequence[str], batch_size: int, images_per_chunk: int = 256
) -> list[tuple[list[int], list[tuple[list[int], list[int]]]]]:
    """The order in which to answer a set of questions so that each image is encoded once and each batch
    decodes answers of similar length.

    A batch decodes until its longest answer is done: a yes/no question batched with a free-text one pays
    for the long answer. Question i is about image ``image_keys[i]`` (any hashable identity: a content hash,
    a path). The distinct images are taken in order of first appearance, ``images_per_chunk`` at a time;
    within a chunk the questions are sorted by their text (the same question, or the same type, has answers
    of similar length) and cut into batches of ``batch_size``.

    Returns one ``(image_rows, batches)`` per chunk: ``image_rows[j]`` is the first row showing the chunk's
    image j (the row to load it from), and each batch is ``(rows, image_positions)`` with
    ``image_positions[k]`` the position in ``image_rows`` of the image of ``rows[k]``. Every row appears in
    exactly one batch. Answers do not depend on the order (`generate_answers` masks padding), so the caller
    puts them back by row.
    """
    if len(image_keys) != len(questions):
        raise ValueError(f"{len(image_keys)} image keys for {len(questions)} questions.")
    if batch_size < 1 or images_per_chunk < 1:
        raise ValueError(f"batch_size and images_per_chunk must be at least 1, got {batch_size}, {images_per_chunk}.")
    rows_of: dict[Hashable, list[int]] = {}
    for row, key in enumerate(image_keys):
        rows_of.setdefault(key, []).append(row)
    images = list(rows_of.values())
    plan = []
    for start in range(0, len(images), images_per_chunk):
        chunk = images[start : start + images_per_chunk]
        position = {row: j for j, rows in enumerate(chunk) for row in rows}
        rows = sorted(position, key=lambda row: (" ".join(questions[row].lower().split()), position[row], row))
        batches = [
            (rows[i : i + batch_size], [position[row] for row in rows[i : i + batch_size]])
            for i in range(0, len(rows), batch_size)
        ]
        plan.append(([rows[0] for rows in chunk], batches))
    return plan


def answering_order(image_keys: Sequence[Hashable], questions: Sequence[str], images_per_chunk: int = 256) -> list[int]:
    """All rows in `answering_plan` order (chunks of images, questions sorted by text within a chunk): the
    order in which to present an evaluation set so that consecutive batches decode answers of similar
    length while each chunk's images stay close together."""
    plan = answering_plan(image_keys, questions, max(1, len(questions)), images_per_chunk)
    return [row for _, batches in plan for rows, _ in batches for row in rows]


DEFAULT_MAX_ANSWER_LENGTH = 48


def configure_answer_generation(
    model: BlipForQuestionAnswering, max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH, num_beams: int = 1
) -> None:
    """Store how answers are generated on the model, so that the saved model carries it.

    Sets, on ``model.generation_config`` (written as ``generation_config.json`` by ``save_pretrained`` and
    ``Trainer.save_model``) and on ``model.text_decoder.generation_config`` (the one BLIP's ``generate``
    actually uses, in this process): the start token ``[DEC]`` (bos), the end token ``[SEP]`` (eos), the pad
    token, ``max_length = max_answer_length`` and ``num_beams``. ``max_length`` counts the ``[DEC]`` start,
    exactly like the Trainer's ``generation_max_length`` during evaluation, so an answer has at most
    ``max_answer_length - 1`` generated tokens.

    In transformers 5.x a model loaded with ``from_pretrained`` builds its text decoder's generation config
    from the text config, never from ``generation_config.json``, and generation parameters in ``config.json``
    are dropped on load: a bare ``model.generate(**inputs)`` therefore stops after 20 tokens whatever is
    saved. Plain-transformers users pass the saved length explicitly::

        model.generate(**inputs, max_length=model.generation_config.max_length)

    `retina_vqa.predict.load_for_inference` applies the saved settings itself.
    """
    if max_answer_length < 2:
        raise ValueError(f"max_answer_length must be at least 2 ([DEC], a token), got {max_answer_length}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}.")
    text_config = model.config.text_config
    for config in (model.generation_config, model.text_decoder.generation_config):
        config.bos_token_id = text_config.bos_token_id
        config.decoder_start_token_id = text_config.bos_token_id
        config.eos_token_id = text_config.sep_token_id
        config.pad_token_id = text_config.pad_token_id
        config.max_length = max_answer_length
        config.max_new_tokens = None
        config.num_beams = num_beams
        # Deliberate settings, not ones derived from the model config (older versions regenerate those).
        config._from_model_config = False


def answer_generation_defaults(model: BlipForQuestionAnswering) -> dict[str, int]:
    """``{"max_new_tokens": ..., "num_beams": ...}`` saved with the model, else 48 new tokens and greedy.

    Reads ``model.generation_config`` (loaded from ``generation_config.json``): ``max_new_tokens`` if set,
    else ``max_length - 1`` (the decoder starts from the single ``[DEC]`` token).
    """
    config = model.generation_config
    if config.max_new_tokens is not None:
        max_new_tokens = config.max_new_tokens
    elif config.max_length is not None:
        max_new_tokens = max(1, config.max_length - 1)
    else:
        max_new_tokens = DEFAULT_MAX_ANSWER_LENGTH
    return {"max_new_tokens": max_new_tokens, "num_beams": config.num_beams or 1}


def apply_saved_answer_generation(model: BlipForQuestionAnswering) -> None:
    """After ``from_pretrained``: give the text decoder the answer settings of ``model.generation_config``.

    Afterwards a bare ``model.generate(**inputs)`` uses the saved answer length and beams, with ``[SEP]`` as
    the end token, instead of transformers' 20-token default.
    """
    defaults = answer_generation_defaults(model)
    text_config = model.config.text_config
    config = model.text_decoder.generation_config
    config.bos_token_id = text_config.bos_token_id
    config.eos_token_id = text_config.sep_token_id
    config.pad_token_id = text_config.pad_token_id
    # As a max_length (counting [DEC]), so that a max_length or max_new_tokens passed to generate wins.
    config.max_length = defaults["max_new_tokens"] + 1
    config.max_new_tokens = None
    config.num_beams = defaults["num_beams"]
