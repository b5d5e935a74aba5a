"""Tokenising questions and answers once (cached through `datasets.map`) and keying each row's image.

Images stay encoded in the dataset and become pixels per batch in the collator, so the cache never holds
float images.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Image

from ..arguments import DataTrainingArguments
from ..models.blip2 import PromptLayout, tokenize_prompts_and_answers
from .images import image_key

IMAGE_KEY = "image_key"


def tokenize_questions_and_answers(
    examples: dict[str, list],
    tokenizer,
    question_column: str,
    answer_column: str | None,
    max_question_length: int,
    max_answer_length: int,
) -> dict[str, list[list[int]]]:
    """Question ids (``[CLS] q [SEP]``) and, when answers are given, decoder ids (``[DEC] a [SEP]``).

    The answer is tokenised without special tokens and framed here, so the decoder input is ``[DEC]`` +
    answer + ``[SEP]`` whatever special tokens the tokenizer would add itself, truncated to
    ``max_answer_length`` tokens in all.
    """
    # Empty text is tokenised as such here and reported by validation, which runs on the tokenised rows.
    questions = [(q or "").strip() for q in examples[question_column]]
    encoded = tokenizer(questions, truncation=True, max_length=max_question_length, return_token_type_ids=False)
    result = {"input_ids": encoded["input_ids"]}
    if answer_column is not None:
        answers = [(a or "").strip() for a in examples[answer_column]]
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
        # BLIP's decoder starts from [DEC] (the bos token), as generate() does, and stops at [SEP].
        start, end, room = tokenizer.bos_token_id, tokenizer.sep_token_id, max_answer_length - 2
        result["decoder_input_ids"] = [[start, *ids[:room], end] for ids in answer_ids]
        # For --train_sampling_strategy group_by_length: most answers are 1-3 words, a few are 30; batching
        # by length keeps the short ones from being padded to the long ones.
        result["length"] = [
            len(q) + len(a) for q, a in zip(result["input_ids"], result["decoder_input_ids"], strict=True)
        ]
    return result


def image_keys(examples: dict[str, list], image_column: str) -> dict[str, list[str]]:
    """Each row's `images.image_key`: rows with the same image share a key, which groups questions by image
    (data/sampling.py), lets a batch encode an image once and keys the kept image-encoder outputs."""
    return {IMAGE_KEY: [image_key(value) for value in examples[image_column]]}


def _prepare_batch(examples: dict[str, list], image_column: str, layout=None, **kwargs) -> dict[str, list]:
    if layout is None:  # BLIP VQA: question and [DEC] answer [SEP]
        kwargs.pop("processor"), kwargs.pop("prompt_template")
        text = tokenize_questions_and_answers(examples, **kwargs)
    else:  # BLIP-2 / InstructBLIP: <image> placeholders + prompt, answer + eos
        kwargs.pop("tokenizer")
        text = tokenize_prompts_and_answers(examples, layout=layout, **kwargs)
    return {**text, **image_keys(examples, image_column)}


def prepare_split(
    dataset: Dataset,
    tokenizer,
    data_args: DataTrainingArguments,
    with_answers: bool,
    description: str,
    processor: Any = None,
    layout: PromptLayout | None = None,
) -> Dataset:
    """Tokenise a split and key its images (cached); images stay encoded for the collator to decode.

    With a `layout` (BLIP-2 / InstructBLIP: `models.blip2.PromptLayout`) the rows are prompts with the image
    placeholders (`models.blip2.tokenize_prompts_and_answers`, which needs the `processor`).
    """
    # The collator decodes images itself (one error path for bad files, no PIL objects in workers' queues).
    if isinstance(dataset.features.get(data_args.image_column), Image):
        dataset = dataset.cast_column(data_args.image_column, Image(decode=False))
    # One map: each map writes a new cache file holding every column, image bytes included.
    return dataset.map(
        _prepare_batch,
        batched=True,
        fn_kwargs={
            "tokenizer": tokenizer,
            "processor": processor,
            "layout": layout,
            "prompt_template": data_args.prompt_template,
            "question_column": data_args.question_column,
            "answer_column": data_args.answer_column if with_answers else None,
            "max_question_length": data_args.max_question_length,
            "max_answer_length": data_args.max_answer_length,
            "image_column": data_args.image_column,
        },
        num_proc=data_args.preprocessing_num_workers,
        load_from_cache_file=not data_args.overwrite_cache,
        desc=f"Tokenising {description} questions and answers",
    )
