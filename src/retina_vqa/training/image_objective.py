"""The image-level auxiliary objective (``--image_loss_weight``): the image encoder learns what the image shows.

A BLIP trained from scratch (or far from its pre-training, as fundus photographs are) learns its image features
only through the question encoder and the answer decoder: a long path, on which the demo's tiny model read the
grade worse than an image-only probe on the same pixels and learned which eye it sees late or not at all. This
objective adds a short one. A linear classifier (`ImageAnswerHead`) on the image encoder's ``[CLS]`` state predicts
what the image's closed questions answer (the types with ranked candidate lists in `answering.candidates`: yes/no,
the grade, the eye, ...), each among its own type's answers, so one head serves every closed type; its
cross-entropy, times the weight, is added to the answer loss.

The labels are the training split's own answers, gathered per image (`ImageTargets.image_labels`): every row carries
its image's answer to each closed type, whether or not the row asks it, so each image of a step teaches the encoder
all it is known to show (10 closed types on synthetic RetinaVQA, where a step holds about two rows of an image).
No labels beyond the dataset's. Each label counts like an answer token: the loss is summed over rows and labels and
divided like the answer loss, by the answer tokens of the whole step (`num_items_in_batch`), so it
weighs the same under gradient accumulation and over any number of processes. `VqaTrainer.compute_loss` adds it,
reading the image encoder's states of the step's own forward (`image_states_of`): the model's forward is untouched,
and BLIP, BLIP-2 and InstructBLIP get the same objective. The head is a submodule of the model while it trains (the
optimizer, DDP and checkpoints see it, so a resumed run continues it) and is removed before the model is handed over
(`detach_image_head`): the saved model is what it would be without the objective.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..answering.candidates import ALL_QUESTIONS, AnswerCandidates
from ..data.augment import ORIENTATION_QUESTION_TYPES
from ..data.preprocessing import IMAGE_KEY, IMAGE_TARGET_COLUMN
from ..metrics.normalize import normalize_answer

logger = logging.getLogger(__name__)

__all__ = [
    "HEAD_NAME",
    "IGNORE",
    "IMAGE_TARGET_COLUMN",
    "ImageAnswerHead",
    "ImageTargets",
    "attach_image_head",
    "detach_image_head",
    "image_states_of",
]

# The head's attribute on the model while it trains.
HEAD_NAME = "image_answer_head"
IGNORE = -100


@dataclass(frozen=True)
class ImageTargets:
    """The classes of the objective: every answer of every closed question type, ``classes[i] = (type, answer)``."""

    classes: tuple[tuple[str, str], ...]

    @classmethod
    def from_candidates(cls, candidates: AnswerCandidates | None) -> ImageTargets:
        """The answers of the closed types of `candidates` (what ``--answer_mode auto`` ranks)."""
        if candidates is None:
            return cls(())
        classes = [
            (name, normalize_answer(answer))
            for name, answers in sorted(candidates.answers.items())
            if name != ALL_QUESTIONS and candidates.closed.get(name, False) and len(answers) > 1
            for answer in answers
        ]
        return cls(tuple(classes))

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for t, _ in self.classes))

    def orientation_columns(self) -> tuple[int, ...]:
        """The label columns of the types a mirrored image answers differently (laterality): `data.collator`
        clears them for the images `--augment` flips."""
        return tuple(i for i, name in enumerate(self.types) if name in ORIENTATION_QUESTION_TYPES)

    def class_types(self) -> torch.Tensor:
        """For each class, the index of its type in `types`."""
        index = {t: i for i, t in enumerate(self.types)}
        return torch.tensor([index[t] for t, _ in self.classes], dtype=torch.long)

    def targets(
        self,
        candidates: AnswerCandidates,
        questions: Sequence[str],
        answers: Sequence[str],
        question_types: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Each row's own class (its type as `AnswerCandidates.set_for` finds it under ``auto``), -100 when its type
        is not closed or its answer is not one of the type's."""
        lookup = {pair: i for i, pair in enumerate(self.classes)}
        types = list(question_types) if question_types is not None else [None] * len(questions)
        out = []
        for question, answer, kind in zip(questions, answers, types, strict=True):
            name = candidates.set_for(str(question or ""), kind, "auto")
            out.append(lookup.get((name, normalize_answer(str(answer or ""))), IGNORE) if name else IGNORE)
        return out

    def image_labels(self, row_classes: Sequence[int], image_keys: Sequence[Any] | None) -> list[list[int]]:
        """For each row, its image's class of every type (``[type 0, type 1, ...]``, -100 where the image has no
        row of that type, or rows that disagree), gathered over the image's rows (by ``image_keys``; None: each
        row is its own image)."""
        class_types = self.class_types().tolist()
        keys = list(image_keys) if image_keys is not None else list(range(len(row_classes)))
        per_image: dict[Any, list[int]] = {}
        for key, label in zip(keys, row_classes, strict=True):
            labels = per_image.setdefault(key, [IGNORE] * len(self.types))
            if label == IGNORE:
                continue
            kind = class_types[label]
            if labels[kind] == IGNORE:
                labels[kind] = label
            elif labels[kind] != label:
                labels[kind] = -200  # two answers for one image: no label of this type (marked, then cleared)
        for labels in per_image.values():
            labels[:] = [IGNORE if label == -200 else label for label in labels]
        return [per_image[key] for key in keys]

    def add_to(self, dataset: Any, candidates: AnswerCandidates, data_args: Any) -> Any:
        """`dataset` (the training split, with the ``image_key`` of `data.prepare_split` when it has one) with an
        ``image_target`` column: each row's image labels (`image_labels`); a clear error when no image has one."""
        names = dataset.column_names
        kinds = dataset[data_args.question_type_column] if data_args.question_type_column in names else None
        rows = self.targets(candidates, dataset[data_args.question_column], dataset[data_args.answer_column], kinds)
        if not any(t != IGNORE for t in rows):
            raise ValueError(
                "--image_loss_weight needs training rows whose question type is closed (a small set of short "
                f"answers: yes/no, a grade, ...); none of the {len(rows)} rows is. Train without "
                "--image_loss_weight, or give the rows a question_type (and answer_type) column."
            )
        labels = self.image_labels(rows, dataset[IMAGE_KEY] if IMAGE_KEY in names else None)
        logger.info(
            "Image objective: %d classes over %d closed question types (%s); %.1f labels per training row",
            len(self.classes),
            len(self.types),
            ", ".join(self.types),
            sum(sum(label != IGNORE for label in row) for row in labels) / max(len(labels), 1),
        )
        if IMAGE_TARGET_COLUMN in names:
            dataset = dataset.remove_columns(IMAGE_TARGET_COLUMN)
        return dataset.add_column(IMAGE_TARGET_COLUMN, labels)


class ImageAnswerHead(nn.Module):
    """A linear classifier over every closed type's answers, read from the image encoder's ``[CLS]`` state."""

    def __init__(self, hidden_size: int, class_types: torch.Tensor, weight: float) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, len(class_types))
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("class_types", class_types.clone(), persistent=False)
        self.loss_weight = float(weight)

    def forward(self, image_states: torch.Tensor) -> torch.Tensor:
        """Logits of every class for each image (batch x patches + 1 x hidden -> batch x classes)."""
        return self.classifier(image_states[:, 0])

    def loss(
        self,
        image_states: torch.Tensor,
        targets: torch.Tensor,
        image_index: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """The weighted objective of one batch. ``targets`` (rows x types) holds each row's image labels
        (`ImageTargets.image_labels`); every label is a cross-entropy among its type's answers. Summed over rows and
        types and divided by `num_items_in_batch` (the step's answer tokens: each label weighs like an answer token);
        without it, averaged over the labels. ``image_states`` holds one entry per distinct image when
        ``image_index`` (one per row) is given."""
        logits = self(image_states).float()
        if image_index is not None:
            logits = logits.index_select(0, image_index)
        targets = targets.to(logits.device).reshape(logits.shape[0], -1)
        total = logits.sum() * 0.0  # keeps the head in the graph (DDP expects a gradient for every parameter)
        count = 0
        for kind in range(targets.shape[1]):
            labelled = targets[:, kind] != IGNORE
            if not bool(labelled.any()):
                continue
            columns = (self.class_types == kind).nonzero().squeeze(1)
            local = targets[labelled, kind] - columns[0]  # a type's classes are contiguous
            total = total + nn.functional.cross_entropy(logits[labelled][:, columns], local, reduction="sum")
            count += int(labelled.sum())
        if num_items_in_batch is not None:
            total = total / num_items_in_batch
        elif count:
            total = total / count
        return self.loss_weight * total


class _Caught:
    value: torch.Tensor | None = None


@contextlib.contextmanager
def image_states_of(model: nn.Module) -> Iterator[_Caught]:
    """Catch the image encoder's states (``last_hidden_state`` of ``model.vision_model``) of the forwards run inside:
    ``.value`` holds the last one. Raises when the encoder did not run (its outputs were kept, or it is absent)."""
    caught = _Caught()

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        caught.value = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = model.vision_model.register_forward_hook(keep)
    try:
        yield caught
    finally:
        handle.remove()
    if caught.value is None:
        raise RuntimeError(
            "--image_loss_weight: the image encoder did not run in this training step (kept image-encoder outputs?); "
            "the objective needs its states. Drop --cache_image_embeddings or --image_loss_weight."
        )


def attach_image_head(model: nn.Module, targets: ImageTargets, weight: float) -> ImageAnswerHead:
    """Give a model with an image encoder (``vision_model``: BLIP, BLIP-2, InstructBLIP) the objective's head, a
    submodule while it trains."""
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    if vision is None or not hasattr(model, "vision_model"):
        raise ValueError("--image_loss_weight needs a model with an image encoder (vision_model) and a [CLS] state.")
    head = ImageAnswerHead(vision.hidden_size, targets.class_types(), weight)
    parameter = next(model.vision_model.parameters())
    head.to(device=parameter.device)
    setattr(model, HEAD_NAME, head)
    return head


def detach_image_head(model: nn.Module) -> bool:
    """Remove the head (before the model is saved and handed over); whether there was one."""
    if HEAD_NAME in getattr(model, "_modules", {}):
        delattr(model, HEAD_NAME)
        return True
    return False
