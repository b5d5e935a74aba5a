"""Answering questions about fundus images with a fine-tuned BLIP VQA model: the Python API.

    from retina_vqa.inference import answer_questions, load_for_inference

    model, processor = load_for_inference("outputs/demo")
    answer_questions(model, processor, "fundus.jpg", ["what is the diagnosis?", "is there any abnormality?"])

Images are read with `retina_vqa.data.images.load_image` (JPEG, PNG, TIFF, grayscale, alpha, palette, CMYK,
16-bit, EXIF-rotated, very large photographs), questions are truncated as in training, and answers are
generated in `data.ordering.answering_plan` order with the real question padding mask
(`models.blip.generate_answers`), so batched answers equal one-at-a-time answers. The command line is
`python -m retina_vqa.predict`.

Ranked answers with probabilities (`models.ranking`), for the question types whose answers the model knows
(``answer_candidates.json``, saved with the model by run_vqa.py)::

    candidates = load_answer_candidates("outputs/demo")
    answer_questions(model, processor, "fundus.jpg", ["what is the diagnosis?"], answer_mode="auto",
                     answer_candidates=candidates, return_scores=True)
    # [{"question": "what is the diagnosis?", "answer": "moderate dr", "question_type": "diagnosis",
    #   "answer_scores": {"moderate dr": 0.71, "severe dr": 0.18, ...}}]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image as PILImage
from tqdm.auto import tqdm
from transformers import BlipForQuestionAnswering

from .answering.candidates import ANSWER_MODES, AnswerCandidates, load_answer_candidates
from .answering.step import answer_rows
from .data.collator import PromptCollator
from .data.images import ImageSource, image_key, load_image
from .data.ordering import answering_plan
from .data.pixels import pixel_values
from .metrics import decode_ids
from .metrics.gradability import GRADING_TYPES, UNGRADABLE_OUTCOME, ungradable_images
from .metrics.screening import OperatingPoint, referral
from .models.blip import encode_images
from .models.blip2 import DEFAULT_PROMPT_TEMPLATE, PromptLayout
from .models.family import Family, tokenize_prompts_and_answers
from .models.generation_config import answer_generation_defaults
from .models.loading import load_for_inference
from .models.ranking import (
    DEFAULT_TOP_K,
    TokenizedCandidates,
    score_candidates,
    tokenize_candidates,
)
from .ood import OODGuard, check_images, find_ood_guard  # out-of-distribution guard

__all__ = [
    "AnswerCandidates",
    "answer_planned",
    "answer_questions",
    "generation_kwargs",
    "load_answer_candidates",
    "load_for_inference",
    "resolve_answer_candidates",
]

logger = logging.getLogger(__name__)

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


class _Ranking:
    """Which rows are ranked against which list, the lists tokenised once, and the answers with scores."""

    def __init__(
        self,
        candidates: AnswerCandidates | None,
        row_sets: Sequence[str | None] | None,
        question_types: Sequence[str | None],
        processor: Any,
        layout: PromptLayout | None,
        max_target_tokens: int | None,
        top_k: int | None,
    ) -> None:
        self.candidates = candidates
        self.row_sets = list(row_sets) if row_sets is not None else [None] * len(question_types)
        self.question_types = list(question_types)
        self.top_k = top_k
        names = dict.fromkeys(name for name in self.row_sets if name is not None)
        if names and candidates is None:
            raise ValueError("Rows to rank need answer candidates.")
        self.tokenized: dict[str, TokenizedCandidates] = {
            name: tokenize_candidates(candidates.answers[name], processor, layout, max_target_tokens) for name in names
        }
        self.results: list[dict[str, Any] | None] = [None] * len(self.row_sets)
        self.tokenizer = processor.tokenizer

    def record(self, row: int, question: str, answer: str, scores: dict[str, float] | None = None) -> None:
        self.results[row] = {
            "question": question,
            "answer": answer,
            "answer_scores": scores,
            "question_type": self.question_types[row],
        }

    def answer(
        self,
        model: Any,
        layout: PromptLayout | None,
        batch: dict[str, Any],
        rows: Sequence[int],
        questions: Sequence[str],
        generation_kwargs: dict[str, Any],
    ) -> None:
        """Answer the batch of `rows` (`answering.step.answer_rows`): generated rows decoded, ranked rows scored
        against their lists; every answer recorded."""
        ranked = [k for k, row in enumerate(rows) if self.row_sets[row] is not None]
        step = answer_rows(model, layout, batch, ranked, generation_kwargs)
        if step.generated is not None:
            for k, answer in zip(step.generated_rows, decode_ids(self.tokenizer, step.generated.cpu()), strict=True):
                self.record(rows[k], questions[rows[k]], answer)
        if step.prefix is not None:
            names = [self.row_sets[rows[k]] for k in step.ranked_rows]
            scores = score_candidates(step.prefix, [self.tokenized[name] for name in names], self.top_k)
            for k, name, values in zip(step.ranked_rows, names, scores, strict=True):
                probs = self.candidates.probabilities(name, values)
                self.record(rows[k], questions[rows[k]], next(iter(probs)), probs)


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
    candidates: AnswerCandidates | None = None,
    row_sets: Sequence[str | None] | None = None,
    question_types: Sequence[str | None] | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    return_scores: bool = False,
) -> list[str] | list[dict[str, Any]]:
    """Answers in row order, computed in `data.ordering.answering_plan` order: every distinct image encoded once
    per chunk, questions batched with others of the same text (answers of similar length).

    ``row_sets[i]`` names the candidate list of `candidates` that row i is ranked against (None: generated). With
    `return_scores`, one dict per row (question, answer, answer_scores -- candidate probabilities, highest first, or
    None --, question_type from `question_types`) instead of the answer strings.
    """
    tokenizer = processor.tokenizer
    parameter = next(model.parameters())
    types = list(question_types) if question_types is not None else [None] * len(questions)
    layout = Family.of(model.config, processor).layout
    # Candidates are cut like generated answers: at most max_new_tokens tokens, end token included.
    ranking = _Ranking(candidates, row_sets, types, processor, layout, generation_kwargs.get("max_new_tokens"), top_k)
    if layout is not None:  # BLIP-2 / InstructBLIP: prompts with image placeholders, one image per row
        settings = {k: v for k, v in generation_kwargs.items() if k != "max_length"}
        for _, batches in answering_plan(image_keys, questions, batch_size):
            for rows, _ in batches:
                batch = prompt_batch(
                    model, processor, [questions[row] for row in rows], load(list(rows)), layout=layout
                )
                ranking.answer(model, layout, batch, rows, questions, settings)
                if progress is not None:
                    progress.update(len(rows))
    else:  # BLIP: every distinct image of a chunk encoded once, its questions batched by text
        for image_rows, batches in answering_plan(image_keys, questions, batch_size, images_per_chunk):
            encoded = []
            for start in range(0, len(image_rows), batch_size):
                images = load(image_rows[start : start + batch_size])
                pixels = pixel_values(processor.image_processor, images)
                encoded.append(encode_images(model, pixels.to(device=parameter.device, dtype=parameter.dtype)))
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
                batch = {
                    "input_ids": text["input_ids"].to(parameter.device),
                    "attention_mask": text["attention_mask"].to(parameter.device),
                    "image_embeds": image_embeds,
                    "image_index": torch.tensor(positions, device=parameter.device),
                }
                ranking.answer(model, None, batch, rows, questions, generation_kwargs)
                if progress is not None:
                    progress.update(len(rows))
    if return_scores:
        return ranking.results
    return [result["answer"] for result in ranking.results]


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


def resolve_answer_candidates(
    model: Any, answer_candidates: AnswerCandidates | Mapping[str, Sequence[str]] | Sequence[str] | str | None
) -> AnswerCandidates | None:
    """`answer_candidates` as `AnswerCandidates`: given as such, as ``{question_type: [answers]}``, as one list for
    every question, or as a path (an ``answer_candidates.json``, a model folder, or an ``--answer_list`` file);
    None: the lists saved with the model (``answer_candidates.json`` in its folder), if any."""
    if answer_candidates is None:
        name = getattr(model, "name_or_path", None)
        return load_answer_candidates(name) if name else None
    if isinstance(answer_candidates, AnswerCandidates):
        return answer_candidates
    if isinstance(answer_candidates, (str, os.PathLike)):
        if os.path.isdir(answer_candidates):
            return AnswerCandidates.load(answer_candidates)
        return AnswerCandidates.from_file(answer_candidates)
    if isinstance(answer_candidates, Mapping):
        return AnswerCandidates(answers={str(k): tuple(v) for k, v in answer_candidates.items()})
    return AnswerCandidates(answers={"*": tuple(answer_candidates)})


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
    answer_mode: str = "generate",
    answer_candidates: AnswerCandidates | Mapping[str, Sequence[str]] | Sequence[str] | str | None = None,
    return_scores: bool = False,
    question_types: Sequence[str | None] | None = None,
    top_k: int | None = DEFAULT_TOP_K,
    operating_points: Sequence[OperatingPoint] | None = None,
    ood_guard: OODGuard | bool | None = None,  # out-of-distribution guard
) -> list[str] | list[dict[str, Any]]:
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
        answer_mode: ``"generate"`` (default: every answer generated), ``"rank"`` (every question with a candidate
            list is answered with the most likely of its candidates) or ``"auto"`` (rank the closed question types,
            generate the open ones). See `retina_vqa.models.ranking`.
        answer_candidates: the candidate lists (`AnswerCandidates`, ``{question_type: [answers]}``, one list for
            every question, or a path); default: those saved with the model (`load_answer_candidates`).
        return_scores: return one dict per question instead of the answer strings: ``{"question", "answer",
            "answer_scores", "question_type"}``, with ``answer_scores`` the candidates' probabilities (temperature
            scaled when the model was calibrated), highest first, for ranked answers and None for generated ones.
        question_types: the type of each question, where known (a dataset's ``question_type`` column); else
            the type of its wording in the candidates.
        top_k: longer candidate lists are pre-selected by the first token's probability (BLIP's k).
        operating_points: with `return_scores`, ranked diagnosis answers also get ``referral`` (P(referable) and
            "refer" / "do not refer" at each point): the points saved with the model by ``--operating_points``
            (`metrics.screening.find_operating_points`). Whatever the points, when the model answers "no" to an
            image's quality question ("is the image quality adequate for grading?", asked among the questions), that
            image's grading answers (DR grade, referable DR, any DR) get ``screening``: "ungradable: re-image"
            instead of a ``referral`` (`add_referrals`); their answers stay.
        ood_guard: with `return_scores`, every answer also gets ``out_of_distribution``: ``{"score", "threshold",
            "flagged"}`` of its image (`retina_vqa.ood`). Default: the guard saved with the model
            (``ood_guard.json``), if any; False: no check.

    Raises:
        ImageLoadError: an image cannot be read; the message names it (``image 3 (file 'x.jpg')``).
        ValueError: ranking was asked for, but there are no candidate lists.
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
    if answer_mode not in ANSWER_MODES:
        raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {answer_mode!r}.")
    if question_types is not None and len(question_types) != len(questions):
        raise ValueError(f"{len(question_types)} question types for {len(questions)} questions.")
    settings = generation_kwargs(model, max_new_tokens, num_beams)
    candidates, row_sets, types = None, None, list(question_types or [None] * len(questions))
    if answer_mode != "generate" or return_scores:
        candidates = resolve_answer_candidates(model, answer_candidates)
    if answer_mode != "generate":
        if candidates is None:
            raise ValueError(
                f"answer_mode={answer_mode!r} ranks known answers, but none were given and the model has no "
                "answer_candidates.json: pass answer_candidates (a list, {question_type: [answers]} or a file), or "
                "use a model trained by run_vqa.py."
            )
        row_sets = candidates.assign(questions, types, answer_mode)
        unranked = sum(name is None for name in row_sets)
        if answer_mode == "rank" and unranked:
            logger.warning("%d of %d questions have no candidate list and are generated.", unranked, len(questions))
    if candidates is not None:
        types = [t if t is not None else candidates.question_type(q) for q, t in zip(questions, types, strict=True)]

    def load(rows: list[int]) -> list[PILImage.Image]:
        return [load_image(images[row], where=f"image {row}", max_side=max_image_side) for row in rows]

    keys = [image_key(image) for image in images]
    answered = answer_planned(
        model,
        processor,
        keys,
        questions,
        load,
        batch_size,
        settings,
        images_per_chunk,
        candidates=candidates,
        row_sets=row_sets,
        question_types=types,
        top_k=top_k,
        return_scores=return_scores,
    )
    if return_scores:
        add_referrals(answered, operating_points or [], keys)
    # Out-of-distribution guard: each distinct image's distance to the training images' features.
    guard = None
    if return_scores and ood_guard is not False:
        guard = find_ood_guard(model) if ood_guard is None or ood_guard is True else ood_guard
    if guard is not None:
        checks = check_images(guard, model, processor, keys, load, batch_size)
        for answer, check in zip(answered, checks, strict=True):
            answer["out_of_distribution"] = check
    return answered


def add_referrals(
    answers: Sequence[dict[str, Any]],
    points: Sequence[OperatingPoint],
    image_keys: Sequence[Hashable] | None = None,
) -> None:
    """The screening outcome of each answer (scored answers, as `answer_questions` returns them with
    `return_scores`), in place.

    With `image_keys` (one per answer, the same for the answers about one image), an image whose quality question
    the model answers "no" is ungradable: its grading answers (`metrics.gradability.GRADING_TYPES`) get
    ``screening`` = "ungradable: re-image" and no ``referral``. Otherwise each ranked diagnosis answer gets its
    ``referral`` at the saved operating points `points` (``operating_points.json``, `metrics.screening.referral`):
    P(referable) and "refer" / "do not refer" per point. A quality question not asked is not guessed at.
    """
    keys = list(image_keys) if image_keys is not None else [None] * len(answers)
    if len(keys) != len(answers):
        raise ValueError(f"{len(keys)} image keys for {len(answers)} answers.")
    types = [answer.get("question_type") for answer in answers]
    ungradable = ungradable_images(keys, types, [str(answer.get("answer", "")) for answer in answers])
    for answer, key, kind in zip(answers, keys, types, strict=True):
        if key is not None and key in ungradable and kind in GRADING_TYPES:
            answer.pop("referral", None)
            answer["screening"] = UNGRADABLE_OUTCOME
        elif points and kind == "diagnosis" and answer.get("answer_scores"):
            answer["referral"] = referral(answer["answer_scores"], points)
