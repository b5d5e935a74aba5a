"""Answering questions about fundus images with a fine-tuned BLIP VQA model: the Python API.

    from retina_vqa.inference import answer_questions, load_for_inference

    model, processor = load_for_inference("outputs/demo")
    answer_questions(model, processor, "fundus.jpg", ["what is the diagnosis?", "is there any abnormality?"])

Images are read with `retina_vqa.data.images.load_image` (JPEG, PNG, TIFF, grayscale, alpha, palette, CMYK,
16-bit, EXIF-rotated, very large photographs), questions are truncated as in training, and answers are
generated in `data.ordering.answering_plan` order with the real question padding mask
(`models.blip.generate_answers`), so batched answers equal one-at-a-time answers. The command line is
`python -m retina_vqa.predict`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image as PILImage
from tqdm.auto import tqdm
from transformers import BlipForQuestionAnswering

from .data.collator import PromptCollator
from .data.images import ImageSource, image_key, load_image
from .data.ordering import answering_plan
from .metrics import decode_ids
from .models.blip import encode_images, generate_answers
from .models.blip2 import DEFAULT_PROMPT_TEMPLATE, PromptLayout, generate_prompt_answers, tokenize_prompts_and_answers
from .models.generation_config import answer_generation_defaults
from .models.loading import load_for_inference

__all__ = ["answer_questions", "answer_planned", "generation_kwargs", "load_for_inference"]

DEFAULT_MAX_IMAGE_SIDE = 2048


def generation_kwargs(
    model: BlipForQuestionAnswering, max_new_tokens: int | None, num_beams: int | None
) -> dict[str, Any]:
    """The decoder's ``generate`` settings: the given length and beams, else those saved with the model, checked
    against the decoder's positions."""
    defaults = answer_generation_defaults(model)
    max_new_tokens = defaults["max_new_tokens"] if max_new_tokens is None else max_new_tokens
    num_beams = defaults["num_beams"] if num_beams is None else num_beams
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}.")
    positions = getattr(model.config.text_config, "max_position_embeddings", None) or float("inf")
    if max_new_tokens + 1 > positions:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} does not fit the decoder's {positions} positions "
            f"(one is the [DEC] start): use at most {positions - 1}."
        )
    # max_length=None: the explicit max_new_tokens decides, without transformers' "both set" warning.
    return {"max_new_tokens": max_new_tokens, "max_length": None, "num_beams": num_beams}


@torch.no_grad()
def answer_planned(
    model: BlipForQuestionAnswering,
    processor: Any,
    image_keys: Sequence[Hashable],
    questions: Sequence[str],
    load: Callable[[list[int]], list[PILImage.Image]],
    batch_size: int,
    generation_kwargs: dict[str, Any],
    images_per_chunk: int = 256,
    progress: tqdm | None = None,
) -> list[str]:
    """Answers in row order, computed in `data.ordering.answering_plan` order: every distinct image encoded once
    per chunk, questions batched with others of the same text (answers of similar length)."""
    tokenizer = processor.tokenizer
    parameter = next(model.parameters())
    answers: list[str | None] = [None] * len(questions)
    if not hasattr(model, "text_decoder"):  # BLIP-2 / InstructBLIP: prompts with image placeholders
        return _answer_prompts(model, processor, image_keys, questions, load, batch_size, generation_kwargs, progress)
    for image_rows, batches in answering_plan(image_keys, questions, batch_size, images_per_chunk):
        encoded = []
        for start in range(0, len(image_rows), batch_size):
            images = load(image_rows[start : start + batch_size])
            pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
            encoded.append(encode_images(model, pixel_values.to(device=parameter.device, dtype=parameter.dtype)))
        image_embeds = torch.cat(encoded)
        for rows, positions in batches:
            # Truncated as in training: run_vqa.py saves --max_question_length as the tokenizer's model_max_length.
            text = tokenizer(
                [questions[row].strip() for row in rows],
                padding=True,
                truncation=True,
                return_token_type_ids=False,
                return_tensors="pt",
            )
            generated = generate_answers(
                model,
                pixel_values=None,
                image_embeds=image_embeds,
                image_index=torch.tensor(positions, device=parameter.device),
                input_ids=text["input_ids"].to(parameter.device),
                attention_mask=text["attention_mask"].to(parameter.device),
                **generation_kwargs,
            )
            for row, answer in zip(rows, decode_ids(tokenizer, generated.cpu()), strict=True):
                answers[row] = answer
            if progress is not None:
                progress.update(len(rows))
    return answers


def prompt_batch(
    model: Any,
    processor: Any,
    questions: Sequence[str],
    images: Sequence[PILImage.Image],
    prompt_template: str | None = None,
    layout: PromptLayout | None = None,
    answer_ids: Sequence[list[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """BLIP-2 / InstructBLIP inputs for ``questions[i]`` about ``images[i]`` (RGB, already loaded), on the model's
    device: the prompt the model was trained with (``model.config.prompt_template``, saved by run_vqa.py, unless
    given), tokenised, truncated and padded exactly as training built them (answering pads on the left). With
    `answer_ids` (answer + eos per row), a training batch with its labels (teacher forcing)."""
    layout = layout or PromptLayout.from_model(model.config, processor)
    template = prompt_template or getattr(model.config, "prompt_template", None) or DEFAULT_PROMPT_TEMPLATE
    text = tokenize_prompts_and_answers(
        {"question": list(questions)},
        processor,
        layout,
        "question",
        None,
        template,
        # Truncated as in training: run_vqa.py saves --max_question_length as model_max_length.
        max_question_length=processor.tokenizer.model_max_length,
        max_answer_length=0,
    )
    features = [{**{k: v[i] for k, v in text.items()}, "image": image} for i, image in enumerate(images)]
    for feature, ids in zip(features, answer_ids or (), strict=False):
        feature["answer_ids"] = list(ids)
    collate = PromptCollator.from_layout(layout, processor.image_processor, max_image_side=None)
    device = next(model.parameters()).device
    pixel_dtype = next(model.vision_model.parameters()).dtype
    return {
        k: v.to(device, dtype=pixel_dtype if v.is_floating_point() else v.dtype) for k, v in collate(features).items()
    }


@torch.no_grad()
def _answer_prompts(
    model: Any,
    processor: Any,
    image_keys: Sequence[Hashable],
    questions: Sequence[str],
    load: Callable[[list[int]], list[PILImage.Image]],
    batch_size: int,
    generation_kwargs: dict[str, Any],
    progress: tqdm | None = None,
) -> list[str]:
    """BLIP-2 / InstructBLIP: the prompt the model was trained with (saved in its config by run_vqa.py), the
    same tokenisation and collator as training, answers cut from the generated sequences."""
    layout = PromptLayout.from_model(model.config, processor)
    answers: list[str | None] = [None] * len(questions)
    for _, batches in answering_plan(image_keys, questions, batch_size):
        for rows, _ in batches:
            batch = prompt_batch(model, processor, [questions[row] for row in rows], load(list(rows)), layout=layout)
            settings = {k: v for k, v in generation_kwargs.items() if k != "max_length"}
            generated = generate_prompt_answers(model, layout, **batch, **settings)
            for row, answer in zip(rows, decode_ids(processor.tokenizer, generated.cpu()), strict=True):
                answers[row] = answer
            if progress is not None:
                progress.update(len(rows))
    return answers


def answer_questions(
    model: BlipForQuestionAnswering,
    processor: Any,
    images: ImageSource | Sequence[ImageSource],
    questions: str | Sequence[str],
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    batch_size: int = 32,
    max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE,
    images_per_chunk: int = 256,
) -> list[str]:
    """Answer ``questions[i]`` about ``images[i]``, in batches; one answer string per question.

    Args:
        model, processor: as returned by `load_for_inference` (or any BlipForQuestionAnswering with the mask
            fix applied).
        images: one image source per question (a path, bytes, PIL image, numpy array, datasets image
            dict, ...: see `retina_vqa.data.images.load_image`), or a single image for all questions.
        questions: the questions (a single string is one question).
        max_new_tokens: longest answer in tokens; default: the length saved with the model, else 48.
        num_beams: beam search width; default: the value saved with the model, else 1 (greedy).
        batch_size: questions per forward pass. Answers do not depend on it.
        images_per_chunk: distinct images encoded and held at a time. Each image is encoded once per chunk,
            and the questions about a chunk's images are answered grouped by question text (answers of
            similar length together); memory grows with it.
        max_image_side: very large photographs are downsized on load to this longer side (None: never).

    Raises:
        ImageLoadError: an image cannot be read; the message names it (``image 3 (file 'x.jpg')``).
    """
    if isinstance(questions, str):
        questions = [questions]
    questions = list(questions)
    if isinstance(images, (str, os.PathLike, bytes, bytearray, PILImage.Image, Mapping)) or not isinstance(
        images, Sequence
    ):
        images = [images] * len(questions)
    images = list(images)
    if len(images) != len(questions):
        raise ValueError(
            f"{len(images)} images for {len(questions)} questions: give one image per question, or one image."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    settings = generation_kwargs(model, max_new_tokens, num_beams)

    def load(rows: list[int]) -> list[PILImage.Image]:
        return [load_image(images[row], where=f"image {row}", max_side=max_image_side) for row in rows]

    keys = [image_key(image) for image in images]
    return answer_planned(model, processor, keys, questions, load, batch_size, settings, images_per_chunk)
