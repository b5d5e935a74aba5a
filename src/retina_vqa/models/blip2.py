"""BLIP-2 and InstructBLIP as the recipe runs them: the image placeholders, the training targets, and answers.

BLIP-2 (`Blip2ForConditionalGeneration`) sees the image only through ``num_query_tokens`` ``<image>``
placeholder ids in ``input_ids``, whose embeddings the model overwrites with the Q-Former's outputs. Text
tokenised without them trains a model that never sees the image, and no error says so. Here the placeholders
are written by the recipe itself (`models.family.tokenize_prompts_and_answers`, once, in ``datasets.map``) and
counted in every batch (`data.collator.PromptCollator`):

* decoder-only language model (OPT): ``input_ids`` = ``<image>`` x N + prompt (``--prompt_template``, default
  the BLIP-2 paper's ``"Question: {question} Answer:"``) + answer + eos; ``labels`` are as long as
  ``input_ids``, -100 on the placeholders, the prompt and the padding (the model shifts them itself);
* encoder-decoder language model (Flan-T5): the placeholders and the prompt go to the encoder, ``labels`` are
  the answer ids and eos;
* InstructBLIP: as its language model, and the Q-Former also reads the prompt (``qformer_input_ids``).

`generate_prompt_answers` returns the answer only (a decoder-only model returns prompt + answer) and answers
a padded batch as it answers each question alone: decoder-only prompts are padded on the left, before the
placeholders, so every answer starts right after its own prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

FAMILIES = ("blip", "blip-2", "instructblip")
PROMPT_FAMILIES = ("blip-2", "instructblip")
DEFAULT_PROMPT_TEMPLATE = "Question: {question} Answer:"


def model_family(config: Any) -> str:
    """``"blip"``, ``"blip-2"`` or ``"instructblip"`` from a model config; a clear error for anything else."""
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(
            f"retina-vqa trains BLIP VQA, BLIP-2 and InstructBLIP checkpoints; this one is {family!r}. Use e.g. "
            "Salesforce/blip-vqa-base, Salesforce/blip2-opt-2.7b, Salesforce/blip2-flan-t5-xl or "
            "Salesforce/instructblip-vicuna-7b."
        )
    return family


@dataclass(frozen=True)
class PromptLayout:
    """Where the image goes and how answers end, for one BLIP-2/InstructBLIP model and its processor."""

    num_query_tokens: int
    image_token_id: int
    decoder_only: bool
    instruct: bool
    pad_token_id: int
    eos_token_id: int
    qformer_pad_token_id: int | None = None

    @classmethod
    def from_model(cls, config: Any, processor: Any) -> PromptLayout:
        tokenizer = processor.tokenizer
        image_token_id = getattr(config, "image_token_id", None)
        if image_token_id is None:
            image_token_id = getattr(config, "image_token_index", None)
        processor_queries = getattr(processor, "num_query_tokens", None)
        problems = []
        if image_token_id is None:
            problems.append("the model config has no image_token_index (the <image> placeholder id)")
        elif tokenizer.convert_tokens_to_ids("<image>") != image_token_id:
            problems.append(
                f"the tokenizer's <image> id is {tokenizer.convert_tokens_to_ids('<image>')}, the model's "
                f"image_token_index {image_token_id}"
            )
        if processor_queries is not None and processor_queries != config.num_query_tokens:
            problems.append(
                f"the processor adds {processor_queries} image tokens, the model reads {config.num_query_tokens}"
            )
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            problems.append("the tokenizer needs an eos token (answers must end) and a pad token")
        if problems:
            raise ValueError(
                "The processor does not match the BLIP-2 model: " + "; ".join(problems) + ". Use the processor saved "
                "with the model (--processor_name) or the same config folder."
            )
        qformer = getattr(processor, "qformer_tokenizer", None)
        return cls(
            num_query_tokens=config.num_query_tokens,
            image_token_id=image_token_id,
            decoder_only=bool(config.use_decoder_only_language_model),
            instruct=config.model_type == "instructblip",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            qformer_pad_token_id=None if qformer is None else qformer.pad_token_id,
        )


def format_prompts(questions: Sequence[str], prompt_template: str) -> list[str]:
    """The text around each question (``--prompt_template``, with ``{question}``)."""
    if "{question}" not in prompt_template:
        raise ValueError(f"--prompt_template {prompt_template!r} must contain {{question}}.")
    return [prompt_template.format(question=(q or "").strip()) for q in questions]


def prompt_only(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """From a decoder-only training batch (prompt + answer, right-padded), the prompts alone, left-padded:
    what generation continues. The prompt of a row is everything before its first labelled token."""
    rows = []
    for ids, mask, row_labels in zip(input_ids, attention_mask, labels, strict=True):
        labelled = (row_labels != -100).nonzero()
        end = int(labelled[0]) if len(labelled) else int(mask.sum())
        rows.append(ids[:end])
    width = max(len(r) for r in rows)
    prompts = torch.full((len(rows), width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros_like(prompts)
    for i, row in enumerate(rows):
        prompts[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return prompts, mask


@torch.no_grad()
def check_image_tokens(input_ids: torch.Tensor, layout: PromptLayout, doing: str) -> None:
    """Refuse prompts without exactly ``num_query_tokens`` ``<image>`` placeholders each: the model would `doing`
    without (or with a shifted) image, and say nothing."""
    counts = (input_ids == layout.image_token_id).sum(dim=1)
    if (counts != layout.num_query_tokens).any():
        raise ValueError(
            f"Every prompt needs exactly {layout.num_query_tokens} <image> tokens, got {counts.tolist()}: the model "
            f"would {doing} without (or with a shifted) image."
        )


def qformer_inputs(
    layout: PromptLayout, qformer_input_ids: torch.Tensor | None, qformer_attention_mask: torch.Tensor | None
) -> dict[str, torch.Tensor | None]:
    """The keyword arguments that give InstructBLIP's Q-Former the prompt (none for BLIP-2)."""
    if not layout.instruct:
        return {}
    return {"qformer_input_ids": qformer_input_ids, "qformer_attention_mask": qformer_attention_mask}


def generate_prompt_answers(
    model: Any,
    layout: PromptLayout,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    qformer_input_ids: torch.Tensor | None = None,
    qformer_attention_mask: torch.Tensor | None = None,
    **generate_kwargs,
) -> torch.LongTensor:
    """The generated answer ids only (no prompt, no decoder start), padded with the pad id.

    Takes a training batch (with ``labels``: the prompt is cut out of it) or a prompt-only batch (decoder-only
    prompts left-padded, as `data.collator.PromptCollator` pads them without answers). ``generate_kwargs``:
    ``max_new_tokens``, ``num_beams``, ...
    """
    if layout.decoder_only and labels is not None:
        input_ids, attention_mask = prompt_only(input_ids, attention_mask, labels, layout.pad_token_id)
    check_image_tokens(input_ids, layout, "answer")
    extra = qformer_inputs(layout, qformer_input_ids, qformer_attention_mask)
    generate_kwargs.setdefault("eos_token_id", layout.eos_token_id)
    generate_kwargs.setdefault("pad_token_id", layout.pad_token_id)
    generate_kwargs.pop("max_length", None)  # decoder-only: counts the prompt; the answer length is max_new_tokens
    out = model.generate(
        pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, **extra, **generate_kwargs
    )
    # Decoder-only models return prompt + answer; encoder-decoder ones the decoder start + answer.
    return out[:, input_ids.shape[1] :] if layout.decoder_only else out[:, 1:]


def init_query_tokens(model: Any, std: float | None = None) -> None:
    """Draw the Q-Former's learned queries from N(0, std) (default: the Q-Former's initializer_range), as LAVIS does.

    Call it on a BLIP-2 or InstructBLIP built from a config (never on pretrained weights). transformers starts
    the queries at zero: all queries are then the same vector, and the Q-Former's first LayerNorm, taken of a
    zero vector with eps 1e-12, gives them gradients of ~1e10, so clipping the gradient norm to 1 shrinks every
    other gradient to nothing for the first steps.
    """
    std = model.config.qformer_config.initializer_range if std is None else std
    with torch.no_grad():
        torch.nn.init.normal_(model.query_tokens, mean=0.0, std=std)
