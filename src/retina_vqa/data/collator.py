"""Batching: images to pixels per batch, dynamic padding, and the targets, for BLIP VQA (`VqaCollator`) and for
BLIP-2 / InstructBLIP (`PromptCollator`).

The targets follow BLIP's own pre-training and VQA fine-tuning (salesforce/BLIP, LAVIS), which the
popular notebooks get wrong:

* the decoder input is the answer with its first token replaced by the tokenizer's bos token ``[DEC]``
  (this happens once, in the tokenisation map: see `data.tokenize_questions_and_answers`);
* the labels are the same ids with padding (and the never-predicted ``[DEC]``) set to -100; the decoder
  shifts them itself;
* ``decoder_input_ids`` and ``decoder_attention_mask`` are passed explicitly. Without them,
  `BlipForQuestionAnswering` feeds ``labels`` to the decoder as its input: -100 labels then crash the
  embedding lookup, and pad-id labels train on padding while `generate` starts from ``[DEC]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .augment import FundusAugmentation, augment_batch
from .image_cache import DecodedImageCache
from .images import load_image
from .pixels import pixel_values
from .preprocessing import IMAGE_KEY, IMAGE_TARGET_COLUMN


def _pad(
    sequences: list[list[int]], pad_value: int, multiple_of: int | None, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    ids = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(length - len(sequence), length) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def _load_images(
    features: list[dict[str, Any]],
    rows: list[int],
    image_column: str,
    max_side: int | None,
    cache: DecodedImageCache | None,
) -> list[Any]:
    """The decoded images of ``rows``; with a cache, each row that has an ``image_key`` looked up there first (and
    kept there once decoded)."""
    images = []
    for i in rows:
        key = features[i].get(IMAGE_KEY) if cache is not None else None
        image = None if key is None else cache.get((key, max_side))
        if image is None:
            image = load_image(features[i][image_column], where=f"batch row {i}", max_side=max_side)
            if key is not None:
                cache.add((key, max_side), image)
        images.append(image)
    return images


def _augmented(
    augmentation: FundusAugmentation,
    features: list[dict[str, Any]],
    rows: list[int],
    images: list[Any],
    question_type_column: str | None,
) -> tuple[list[Any], list[bool]]:
    """The decoded images of a training batch (``images[j]`` from row ``rows[j]``), each distinct image (by its
    ``image_key``, else its row) augmented once, flipped only where no row about it asks a laterality question; and
    for each row whether its image was flipped."""
    row_keys = [f.get(IMAGE_KEY, i) for i, f in enumerate(features)]
    types = None
    if question_type_column and question_type_column in features[0]:
        types = [f[question_type_column] for f in features]
    flipped: set[Any] = set()
    images = augment_batch(augmentation, images, [row_keys[i] for i in rows], row_keys, types, flipped)
    return images, [key in flipped for key in row_keys]


def _image_targets(features: list[dict[str, Any]], flipped: list[bool] | None, orientation: tuple[int, ...]) -> Any:
    """The rows' image labels (``image_target``: `training.image_objective`), the side of the eye (``orientation``
    columns) cleared where the row's image was mirrored: a flipped left eye looks like a right one."""
    targets = torch.tensor([f[IMAGE_TARGET_COLUMN] for f in features], dtype=torch.long)
    if flipped and orientation and any(flipped):
        rows = torch.tensor(flipped)
        for column in orientation:
            targets[rows, column] = -100
    return targets


def _check_keys(collator: str, features: list[dict[str, Any]], image_column: str, fix: str) -> None:
    """A `KeyError` naming the keys the batch has and `fix` when its rows lack the token ids or the image."""
    required = ("input_ids", image_column)
    missing = [key for key in required if key not in features[0]]
    if missing:
        raise KeyError(
            f"{collator} needs the keys {list(required)} in every row, missing {missing}; the rows have "
            f"{sorted(features[0])}. {fix}"
        )


@dataclass
class VqaCollator:
    """Turn tokenised rows into a BLIP VQA batch.

    Each feature needs ``input_ids`` (question, ``[CLS] ... [SEP]``) and the image column; rows with
    ``decoder_input_ids`` (answer, ``[DEC] ... [SEP]``) also get ``decoder_attention_mask`` and ``labels``.
    Other keys (question text, question type, ...) are ignored.

    Example, with pad id 0, ``[DEC]`` = 5, ``[SEP]`` = 3::

        features = [{"input_ids": [2, 10, 11, 3], "decoder_input_ids": [5, 20, 3], "image": img1},
                    {"input_ids": [2, 12, 3], "decoder_input_ids": [5, 21, 22, 3], "image": img2}]
        batch = collator(features)
        batch["input_ids"]              # [[2, 10, 11, 3], [2, 12, 3, 0]]
        batch["attention_mask"]         # [[1, 1, 1, 1], [1, 1, 1, 0]]
        batch["decoder_input_ids"]      # [[5, 20, 3, 0], [5, 21, 22, 3]]
        batch["decoder_attention_mask"] # [[1, 1, 1, 0], [1, 1, 1, 1]]
        batch["labels"]                 # [[-100, 20, 3, -100], [-100, 21, 22, 3]]
        batch["pixel_values"]           # float tensor (2, 3, H, W) from the image processor

    Rows that carry an ``image_key`` (see `data.image_keys`) and share it share one image: with
    ``share_images`` the batch then holds each distinct image once in ``pixel_values`` and
    ``image_index`` (one entry per row) points to it; the model encodes each image once. With
    ``return_image_keys`` the batch also lists the key of each of those images (``image_keys``), for the
    Trainer's cache of image-encoder outputs (`embedding_cache`).

    With ``augment`` (a `data.augment.FundusAugmentation`: the training collator of ``--augment`` only) each distinct
    image of the batch is augmented once before the image processor; rows whose ``question_type_column`` is a
    laterality question keep their image unflipped.

    Rows with an ``image_target`` (the training split under ``--image_loss_weight``) give ``image_targets``, each
    row's image labels for the image-level objective (`training.image_objective`); the ``orientation_targets``
    columns of them (the eye's side) are cleared for images the augmentation mirrored.

    With an ``image_cache`` (`data.image_cache.DecodedImageCache`, ``--decoded_image_cache_gb``) rows with an
    ``image_key`` take their decoded image from it when it is there: the same pixels, decoded once per process.
    """

    image_processor: Any
    pad_token_id: int
    image_column: str = "image"
    max_image_side: int | None = 2048
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = -100
    share_images: bool = True
    return_image_keys: bool = False
    augment: FundusAugmentation | None = None
    question_type_column: str | None = "question_type"
    orientation_targets: tuple[int, ...] = ()
    image_cache: DecodedImageCache | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        _check_keys(
            "VqaCollator",
            features,
            self.image_column,
            "Tokenise with data.tokenize_questions_and_answers and keep the image column "
            "(TrainingArguments.remove_unused_columns=False).",
        )
        batch: dict[str, Any] = {}
        if self.return_image_keys and not (self.share_images and IMAGE_KEY in features[0]):
            raise KeyError(
                f"return_image_keys needs share_images and an {IMAGE_KEY!r} in every row (data.prepare_split adds it)."
            )
        if self.share_images and IMAGE_KEY in features[0]:
            # Each distinct image once; image_index[i] says which one question i is about.
            position: dict[str, int] = {}
            rows = []
            for i, feature in enumerate(features):
                if feature[IMAGE_KEY] not in position:
                    position[feature[IMAGE_KEY]] = len(rows)
                    rows.append(i)
            batch["image_index"] = torch.tensor([position[f[IMAGE_KEY]] for f in features], dtype=torch.long)
            if self.return_image_keys:
                batch["image_keys"] = [features[i][IMAGE_KEY] for i in rows]
        else:
            rows = list(range(len(features)))
        images = _load_images(features, rows, self.image_column, self.max_image_side, self.image_cache)
        flipped = None
        if self.augment is not None:
            images, flipped = _augmented(self.augment, features, rows, images, self.question_type_column)
        batch["pixel_values"] = pixel_values(self.image_processor, images)
        batch["input_ids"], batch["attention_mask"] = _pad(
            [f["input_ids"] for f in features], self.pad_token_id, self.pad_to_multiple_of
        )
        if "decoder_input_ids" in features[0]:
            decoder_ids, decoder_mask = _pad(
                [f["decoder_input_ids"] for f in features], self.pad_token_id, self.pad_to_multiple_of
            )
            batch["decoder_input_ids"] = decoder_ids
            batch["decoder_attention_mask"] = decoder_mask
            # Masking by the attention mask, not by comparing with the pad id, keeps a real token
            # that happens to share the pad id (some vocabularies) in the loss.
            batch["labels"] = decoder_ids.masked_fill(decoder_mask == 0, self.label_pad_token_id)
            # The decoder predicts token t+1 from token t: [DEC] itself is never a target. Marking it -100
            # keeps the Trainer's count of answer tokens (which normalises the loss) exact.
            batch["labels"][:, 0] = self.label_pad_token_id
        if IMAGE_TARGET_COLUMN in features[0]:  # --image_loss_weight: each row's image labels
            batch["image_targets"] = _image_targets(features, flipped, self.orientation_targets)
        return batch


@dataclass
class PromptCollator:
    """Turn tokenised rows into a BLIP-2 / InstructBLIP batch (`models.blip2.tokenize_prompts_and_answers`).

    Each feature needs ``input_ids`` (``<image>`` x N + prompt) and the image column; ``answer_ids`` (answer +
    eos) make it a training row, ``qformer_input_ids`` an InstructBLIP row. Every row must hold exactly
    ``num_query_tokens`` image tokens: fewer (truncated, or text tokenised without the processor's
    placeholders) would train a model that never sees the image, silently.

    Example, decoder-only, N = 2 image tokens (id 9), pad 0, eos 3::

        {"input_ids": [9, 9, 2, 40, 41], "answer_ids": [50, 3]}, {"input_ids": [9, 9, 2, 42], "answer_ids": [51, 52, 3]}
        input_ids       [[9, 9, 2, 40, 41, 50, 3], [9, 9, 2, 42, 51, 52, 3]]
        labels          [[-100 x 5,        50, 3], [-100 x 4,   51, 52, 3]]   (padding: -100, mask 0)

    Encoder-decoder: ``input_ids`` are the prompts (right-padded), ``labels`` the answers. Without answers
    (answering), decoder-only prompts are padded on the left, so generation continues each prompt directly.

    ``augment`` and ``question_type_column`` as in `VqaCollator`: rows about one image get the same augmented pixels;
    ``image_cache`` as there.
    """

    image_processor: Any
    num_query_tokens: int
    image_token_id: int
    pad_token_id: int
    decoder_only: bool
    image_column: str = "image"
    max_image_side: int | None = 2048
    qformer_pad_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = -100
    augment: FundusAugmentation | None = None
    question_type_column: str | None = "question_type"
    orientation_targets: tuple[int, ...] = ()
    image_cache: DecodedImageCache | None = None

    @classmethod
    def from_layout(cls, layout: Any, image_processor: Any, **kwargs: Any) -> PromptCollator:
        """The collator for a model's `models.blip2.PromptLayout` (placeholders, pad ids, decoder-only or not)."""
        return cls(
            image_processor,
            num_query_tokens=layout.num_query_tokens,
            image_token_id=layout.image_token_id,
            pad_token_id=layout.pad_token_id,
            decoder_only=layout.decoder_only,
            qformer_pad_token_id=layout.qformer_pad_token_id,
            **kwargs,
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        _check_keys(
            "PromptCollator", features, self.image_column, "Tokenise with models.blip2.tokenize_prompts_and_answers."
        )
        for i, feature in enumerate(features):
            count = sum(token == self.image_token_id for token in feature["input_ids"])
            if count != self.num_query_tokens:
                raise ValueError(
                    f"Batch row {i} holds {count} <image> tokens, the model reads {self.num_query_tokens}: its "
                    "image would be ignored or misplaced. Tokenise with models.blip2.tokenize_prompts_and_answers "
                    "(not processor.tokenizer), and keep --max_question_length for the prompt alone."
                )
        images = _load_images(
            features, list(range(len(features))), self.image_column, self.max_image_side, self.image_cache
        )
        flipped = None
        if self.augment is not None:
            images, flipped = _augmented(
                self.augment, features, list(range(len(features))), images, self.question_type_column
            )
        batch: dict[str, Any] = {"pixel_values": pixel_values(self.image_processor, images)}
        prompts = [f["input_ids"] for f in features]
        answers = [f["answer_ids"] for f in features] if "answer_ids" in features[0] else None
        if answers is None:
            batch["input_ids"], batch["attention_mask"] = _pad(
                prompts, self.pad_token_id, self.pad_to_multiple_of, left=self.decoder_only
            )
        elif self.decoder_only:
            batch["input_ids"], batch["attention_mask"] = _pad(
                [p + a for p, a in zip(prompts, answers, strict=True)], self.pad_token_id, self.pad_to_multiple_of
            )
            targets = [[self.label_pad_token_id] * len(p) + a for p, a in zip(prompts, answers, strict=True)]
            batch["labels"], _ = _pad(targets, self.label_pad_token_id, self.pad_to_multiple_of)
        else:
            batch["input_ids"], batch["attention_mask"] = _pad(prompts, self.pad_token_id, self.pad_to_multiple_of)
            batch["labels"], _ = _pad(answers, self.label_pad_token_id, self.pad_to_multiple_of)
        if "qformer_input_ids" in features[0]:
            batch["qformer_input_ids"], batch["qformer_attention_mask"] = _pad(
                [f["qformer_input_ids"] for f in features], self.qformer_pad_token_id or 0, self.pad_to_multiple_of
            )
        if IMAGE_TARGET_COLUMN in features[0]:  # --image_loss_weight, as in VqaCollator
            batch["image_targets"] = _image_targets(features, flipped, self.orientation_targets)
        return batch
