"""Tokenising questions and answers once (cached through `datasets.map`) and keying each row's image.

Images stay encoded in the dataset and become pixels per batch in the collator, so the cache never holds
float images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datasets import Dataset, Image

from ..models.family import Family
from .images import image_key

if TYPE_CHECKING:  # the entry point's flags, read here by attribute; data/ does not import them
    from ..arguments import DataTrainingArguments

IMAGE_KEY = "image_key"
# A training row's class for the image-level objective (`training.image_objective`, --image_loss_weight), -100: none.
IMAGE_TARGET_COLUMN = "image_target"


def image_keys(examples: dict[str, list], image_column: str) -> dict[str, list[str]]:
    """Each row's `images.image_key`: rows with the same image share a key, which groups questions by image
    (data/sampling.py), lets a batch encode an image once and keys the kept image-encoder outputs."""
    return {IMAGE_KEY: [image_key(value) for value in examples[image_column]]}


def _prepare_batch(examples: dict[str, list], image_column: str, family: Family, **kwargs) -> dict[str, list]:
    return {**family.tokenize(examples, **kwargs), **image_keys(examples, image_column)}


BLIP = Family("blip")


def prepare_split(
    dataset: Dataset,
    processor: Any,
    data_args: DataTrainingArguments,
    with_answers: bool,
    description: str,
    family: Family = BLIP,
) -> Dataset:
    """Tokenise a split as its model `family` reads text (`models.family.Family.tokenize`: BLIP's question and
    ``[DEC]`` answer, or BLIP-2's prompt with the image placeholders) and key its images (cached); images stay
    encoded for the collator to decode. `processor`: BLIP's tokenizer is enough."""
    # The collator decodes images itself (one error path for bad files, no PIL objects in workers' queues).
    if isinstance(dataset.features.get(data_args.image_column), Image):
        dataset = dataset.cast_column(data_args.image_column, Image(decode=False))
    # One map: each map writes a new cache file holding every column, image bytes included.
    return dataset.map(
        _prepare_batch,
        batched=True,
        fn_kwargs={
            "processor": processor,
            "family": family,
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
