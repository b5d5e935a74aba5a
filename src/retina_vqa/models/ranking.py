"""Ranked answers: the candidate answers of a question scored by the model's likelihood, instead of generated.

Generation can answer anything ("yes" to "what is the diagnosis?"); ranking picks one of the answers the question
has (BLIP's own VQA evaluation, salesforce/BLIP ``rank_answer``), and gives every candidate a probability. This
module owns the scoring (`score_candidates`): a candidate's score is the sum of the log-likelihoods of its tokens,
end token included, under the model (no label smoothing: plain ``log_softmax`` of the logits). The image and the
question are encoded once; all candidates of a question go through one batched decoder pass that repeats the
question's states (BLIP: the question encoder's output; BLIP-2 with T5: the encoder's output; BLIP-2 /
InstructBLIP with a decoder-only language model: the prompt's key/value cache), never the image encoding. Where a
list is longer than ``top_k`` (BLIP's k = 128), only the ``top_k`` candidates whose first token is most likely are
scored in full, the rest get ``-inf`` (probability 0), as BLIP does.

The lists themselves (which answers, for which questions, with which temperatures) are data:
`answering.candidates`; how an evaluation ranks with them: `answering.plan`.

The three prefixes (`BlipPrefix`, `EncoderDecoderPrefix`, `DecoderOnlyPrefix`) hold a batch of encoded questions;
`blip_prefix` and `prompt_prefix` build them from model inputs as answering and evaluation batch them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from .blip import decode_answers, encode_images, encode_questions
from .blip2 import PromptLayout, check_image_tokens, qformer_inputs

__all__ = [
    "DEFAULT_TOP_K",
    "BlipPrefix",
    "DecoderOnlyPrefix",
    "EncoderDecoderPrefix",
    "TokenizedCandidates",
    "blip_prefix",
    "prompt_prefix",
    "score_candidates",
    "tokenize_candidates",
]

# BLIP's k_test: longer lists are pre-selected by the first token's probability.
DEFAULT_TOP_K = 128
# Question-candidate pairs per decoder pass (memory: pairs x answer length x vocabulary logits).
DEFAULT_MAX_PAIRS = 256


# ---------------------------------------------------------------------------------------------------------
# Candidate tokens
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedCandidates:
    """The tokens each candidate is scored on: the answer and its end token (BLIP ``[SEP]``, BLIP-2 eos),
    right-padded; ``start_ids`` precede them in what the model returns as generated ids (BLIP's ``[DEC]``)."""

    answers: tuple[str, ...]
    targets: torch.Tensor
    mask: torch.Tensor
    start_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.answers)

    def output_ids(self, index: int) -> list[int]:
        """Candidate `index` as generated ids (start, answer, end), the form `generate` returns."""
        length = int(self.mask[index].sum())
        return [*self.start_ids, *self.targets[index, :length].tolist()]


def tokenize_candidates(
    answers: Sequence[str], processor: Any, layout: PromptLayout | None = None, max_target_tokens: int | None = None
) -> TokenizedCandidates:
    """Candidates tokenised as training tokenised answers: without special tokens, cut to `max_target_tokens`
    (end token included), then the end token: ``[SEP]`` for BLIP (`layout` None), eos for BLIP-2 / InstructBLIP."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if layout is None:
        end, start, pad = tokenizer.sep_token_id, (tokenizer.bos_token_id,), tokenizer.pad_token_id
    else:
        end, start, pad = layout.eos_token_id, (), layout.pad_token_id
    ids = tokenizer([str(a).strip() for a in answers], add_special_tokens=False)["input_ids"]
    room = None if max_target_tokens is None else max(0, max_target_tokens - 1)
    rows = [(row if room is None else row[:room]) + [end] for row in ids]
    width = max(len(row) for row in rows)
    targets = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        targets[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return TokenizedCandidates(tuple(answers), targets, mask, start)


# ---------------------------------------------------------------------------------------------------------
# Encoded questions: what every candidate of a question shares
# ---------------------------------------------------------------------------------------------------------


def _target_log_likelihoods(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the unmasked positions of log p(target | logits), in fp32 (no label smoothing)."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return picked.masked_fill(mask == 0, 0.0).sum(-1)


def _shifted(start_id: int, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced decoder inputs for `targets`: the start token, then every target but the last."""
    start = torch.full((targets.shape[0], 1), start_id, dtype=targets.dtype, device=targets.device)
    return torch.cat([start, targets[:, :-1]], 1), torch.cat([torch.ones_like(start), mask[:, :-1]], 1)


class BlipPrefix:
    """BLIP: the encoded questions (question encoder over the image), which the answer decoder cross-attends to."""

    def __init__(self, model: Any, question_embeds: torch.Tensor, question_mask: torch.Tensor) -> None:
        self.model, self.states, self.mask = model, question_embeds, question_mask
        self.start_id = model.decoder_start_token_id

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def device(self) -> torch.device:
        return self.states.device

    def first_token_log_probs(self, questions: torch.Tensor) -> torch.Tensor:
        start = torch.full((len(questions), 1), self.start_id, dtype=torch.long, device=self.device)
        logits = decode_answers(self.model, self.states[questions], self.mask[questions], start).logits
        return logits[:, 0].float().log_softmax(-1)

    def answer_log_likelihoods(
        self, questions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        inputs, input_mask = _shifted(self.start_id, targets, mask)
        # The question states repeated per candidate (index_select), not the image or question encoding.
        logits = decode_answers(self.model, self.states[questions], self.mask[questions], inputs, input_mask).logits
        return _target_log_likelihoods(logits, targets, mask)


class EncoderDecoderPrefix:
    """BLIP-2 with an encoder-decoder language model (Flan-T5): the encoder's output over image tokens + prompt."""

    def __init__(self, model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.lm = model.language_model
        self.states = self.lm.get_encoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask
        ).last_hidden_state
        self.mask = attention_mask
        self.start_id = self.lm.config.decoder_start_token_id

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def device(self) -> torch.device:
        return self.states.device

    def _logits(self, questions: torch.Tensor, inputs: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(
            encoder_outputs=(self.states[questions],),  # as the encoder returns it
            attention_mask=self.mask[questions],
            decoder_input_ids=inputs,
            decoder_attention_mask=input_mask,
            use_cache=False,
        ).logits

    def first_token_log_probs(self, questions: torch.Tensor) -> torch.Tensor:
        start = torch.full((len(questions), 1), self.start_id, dtype=torch.long, device=self.device)
        return self._logits(questions, start, torch.ones_like(start))[:, 0].float().log_softmax(-1)

    def answer_log_likelihoods(
        self, questions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        inputs, input_mask = _shifted(self.start_id, targets, mask)
        return _target_log_likelihoods(self._logits(questions, inputs, input_mask), targets, mask)


class DecoderOnlyPrefix:
    """BLIP-2 / InstructBLIP with a decoder-only language model (OPT, Vicuna): the prompt (image tokens + text,
    left-padded) run once; its key/value cache is what the candidates continue, and its last logits give the
    first answer token's distribution."""

    def __init__(self, model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if (attention_mask[:, -1] == 0).any():
            raise ValueError(
                "Decoder-only prompts must be padded on the left (their last position is the prompt's end)."
            )
        self.lm = model.language_model
        output = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=True)
        self.first = output.logits[:, -1].float().log_softmax(-1)
        self.cache = output.cache
        self.mask = attention_mask

    def __len__(self) -> int:
        return self.first.shape[0]

    @property
    def device(self) -> torch.device:
        return self.first.device

    def first_token_log_probs(self, questions: torch.Tensor) -> torch.Tensor:
        return self.first[questions]

    def answer_log_likelihoods(
        self, questions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        scores = self.first[questions].gather(1, targets[:, :1]).squeeze(1)
        if targets.shape[1] == 1:
            return scores
        # The prompt's keys and values, one row per candidate: a new cache (a cache grows in place as it is used).
        cache = DynamicCache(
            ddp_cache_data=[(layer.keys[questions], layer.values[questions]) for layer in self.cache.layers]
        )
        logits = self.lm(
            input_ids=targets[:, :-1],
            attention_mask=torch.cat([self.mask[questions], mask[:, :-1]], 1),
            cache=cache,
            use_cache=True,
        ).logits
        return scores + _target_log_likelihoods(logits, targets[:, 1:], mask[:, 1:])


@torch.no_grad()
def blip_prefix(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
) -> BlipPrefix:
    """Encode BLIP questions for ranking, with the conventions of `blip.generate_answers`: pixels or image-encoder
    outputs (each distinct image once, ``image_index`` per question), and the real question mask."""
    if (pixel_values is None) == (image_embeds is None):
        raise ValueError("Pass either pixel_values or image_embeds.")
    if image_embeds is None:
        image_embeds = encode_images(model, pixel_values)
    else:  # kept outputs may come from a mixed-precision pass
        image_embeds = image_embeds.to(next(model.text_encoder.parameters()).dtype)
    question_embeds = encode_questions(model, image_embeds, input_ids, attention_mask, image_index)
    return BlipPrefix(model, question_embeds, attention_mask)


@torch.no_grad()
def prompt_prefix(
    model: Any,
    layout: PromptLayout,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    qformer_input_ids: torch.Tensor | None = None,
    qformer_attention_mask: torch.Tensor | None = None,
    **_: Any,
) -> DecoderOnlyPrefix | EncoderDecoderPrefix:
    """Encode BLIP-2 / InstructBLIP prompts (``<image>`` x N + prompt; decoder-only: left-padded, as
    `blip2.prompt_only` and answering collate them) for ranking: the image features scattered into the
    placeholders, as the model's own forward does, then the prompt through the language model once."""
    check_image_tokens(input_ids, layout, "rank")
    extra = qformer_inputs(layout, qformer_input_ids, qformer_attention_mask)
    features = model.get_image_features(pixel_values=pixel_values, **extra, return_dict=True).pooler_output
    embeds = model.get_input_embeddings()(input_ids)
    placeholders = model.get_placeholder_mask(input_ids, inputs_embeds=embeds)
    embeds = embeds.masked_scatter(placeholders, features.to(embeds.device, embeds.dtype))
    if layout.decoder_only:
        return DecoderOnlyPrefix(model, embeds, attention_mask)
    return EncoderDecoderPrefix(model, embeds, attention_mask)


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def score_candidates(
    prefix: BlipPrefix | EncoderDecoderPrefix | DecoderOnlyPrefix,
    candidate_sets: Sequence[TokenizedCandidates],
    top_k: int | None = DEFAULT_TOP_K,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> list[torch.Tensor]:
    """Per question of `prefix`, the log-likelihood of each candidate of ``candidate_sets[i]`` (fp32, CPU).

    Lists longer than `top_k` are pre-selected: only the `top_k` candidates with the most likely first token are
    scored in full, the others get ``-inf``. All (question, candidate) pairs of the batch share decoder passes
    of at most `max_pairs` rows; a candidate's score does not depend on the batch (padding is masked).
    """
    if len(candidate_sets) != len(prefix):
        raise ValueError(f"{len(candidate_sets)} candidate lists for {len(prefix)} questions.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None: score every candidate), got {top_k}.")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}.")
    device = prefix.device
    kept: list[torch.Tensor] = [torch.arange(len(s)) for s in candidate_sets]
    long_lists = [q for q, s in enumerate(candidate_sets) if top_k is not None and len(s) > top_k]
    if long_lists:
        first = prefix.first_token_log_probs(torch.tensor(long_lists, device=device)).cpu()
        for row, q in enumerate(long_lists):
            first_tokens = candidate_sets[q].targets[:, 0]
            kept[q] = first[row].index_select(0, first_tokens).topk(top_k).indices.sort().values
    pairs = [(q, int(c)) for q in range(len(candidate_sets)) for c in kept[q]]
    scores = [torch.full((len(s),), float("-inf")) for s in candidate_sets]
    for start in range(0, len(pairs), max_pairs):
        chunk = pairs[start : start + max_pairs]
        width = max(int(candidate_sets[q].mask[c].sum()) for q, c in chunk)
        targets = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (q, c) in enumerate(chunk):
            length = int(candidate_sets[q].mask[c].sum())
            targets[row, :length] = candidate_sets[q].targets[c, :length]
            mask[row, :length] = 1
        questions = torch.tensor([q for q, _ in chunk], device=device)
        values = prefix.answer_log_likelihoods(questions, targets.to(device), mask.to(device)).float().cpu()
        for (q, c), value in zip(chunk, values, strict=True):
            scores[q][c] = value
    return scores
