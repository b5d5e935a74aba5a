"""BLIP VQA as the recipe runs it: the encoder and decoder steps, batched answering, and the model options.

BLIP answers in three steps: the image encoder (ViT) turns pixels into patch states, the question encoder
(BERT with cross-attention) reads the question against them, and the answer decoder generates the answer
from ``[DEC]`` while cross-attending to the encoded question. `encode_images`, `encode_questions`,
`decode_answers` and `generate_answers` are those steps, written once and used by training
(`SharedImageBlipForQuestionAnswering`), evaluation, answering (`retina_vqa.inference`) and Grad-CAM
(`retina_vqa.explain`).

Generation here passes the real question mask to the decoder: `BlipForQuestionAnswering.generate` in
transformers builds an all-ones mask over the encoded question, so in a padded batch the decoder attends to
the padding of shorter questions and batched answers differ from one-at-a-time answers.

Also owns the model-level options of the recipe: label smoothing, freezing encoders, and changing the image
size of a pretrained checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import BlipConfig, BlipForQuestionAnswering, BlipProcessor, PreTrainedModel

from .attention import cross_attention_shares_rows, shared_encoder_rows
from .compat import BlipTextVisionModelOutput

logger = logging.getLogger(__name__)


def encode_images(
    model: BlipForQuestionAnswering, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
) -> torch.Tensor:
    """The image encoder's patch states (batch x patches + 1 x hidden) that the question encoder reads."""
    return model.vision_model(
        pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
    ).last_hidden_state


def encode_questions(
    model: BlipForQuestionAnswering,
    image_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """The question encoder reading the image patches: the token states the answer decoder attends to.

    With ``image_index``, ``image_embeds`` holds each distinct image once and question i reads image
    ``image_index[i]``; the fused cross-attention then projects each image to keys and values once for all of
    its questions (`attention.shared_encoder_rows`), the other attentions on the repeated rows.
    """
    if image_index is not None and not cross_attention_shares_rows(model.text_encoder):
        image_embeds, image_index = image_embeds.index_select(0, image_index), None
    if image_index is None:
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return model.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
    # Every image patch is valid: no mask (the mask of ones above, without its batch size).
    with shared_encoder_rows(image_index):
        return model.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds
        ).last_hidden_state


def decode_answers(
    model: BlipForQuestionAnswering,
    question_embeds: torch.Tensor,
    question_mask: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor | None = None,
    **kwargs,
):
    """The answer decoder run on given answers (teacher forcing), cross-attending to the encoded question
    under its real mask. ``kwargs`` go to the decoder (``labels``, ``reduction`` -- a BLIP-specific argument
    that `compat` vouches for --, ``use_cache``)."""
    return model.text_decoder(
        input_ids=answer_ids,
        attention_mask=torch.ones_like(answer_ids) if answer_mask is None else answer_mask,
        encoder_hidden_states=question_embeds,
        encoder_attention_mask=question_mask,
        **kwargs,
    )


def answer_groups(lengths: list[int], split_cost: int | None = None) -> list[tuple[list[int], int]]:
    """Rows grouped by answer length so that each group is padded only to its own longest answer.

    Returns ``(rows, width)`` pairs covering every row once. The groups minimise the padded decoder positions
    (rows x width, summed over the groups) plus ``split_cost`` positions for every group beyond the first (a
    decoder call has a fixed cost: default 4 positions per row of the batch), with at most 3 groups. A batch of
    one-word answers and a few findings reports pads every row to the longest report; grouped, the short
    answers run at their own width::

        answer_groups([3, 3, 4, 28, 3])   # [([0, 1, 4, 2], 4), ([3], 28)]
        answer_groups([3, 4, 3])          # [([0, 2, 1], 4)]: splitting would save less than it costs
    """
    if split_cost is None:
        split_cost = 4 * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    widths = sorted(set(lengths))
    # ends[k]: how many rows have a length <= widths[k]; a group is a run of widths (a, b], padded to widths[b].
    ends = [sum(1 for n in lengths if n <= w) for w in widths]
    best: dict[tuple[int, int], tuple[int, list[int]]] = {}  # (groups, last width index) -> (cost, cut points)
    for b in range(len(widths)):
        best[1, b] = (ends[b] * widths[b], [b])
    for groups in (2, 3):
        for b in range(len(widths)):
            options = [
                (best[groups - 1, a][0] + (ends[b] - ends[a]) * widths[b] + split_cost, best[groups - 1, a][1] + [b])
                for a in range(b)
                if (groups - 1, a) in best
            ]
            if options:
                best[groups, b] = min(options)
    last = len(widths) - 1
    _, cuts = min(best[g, last] for g in (1, 2, 3) if (g, last) in best)
    result, start = [], 0
    for b in cuts:
        result.append((order[start : ends[b]], widths[b]))
        start = ends[b]
    return result


def answer_losses(
    model: BlipForQuestionAnswering,
    question_embeds: torch.Tensor,
    question_mask: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Each answer's summed token loss under teacher forcing, the decoder run once per `answer_groups` group.

    Equal to one decoder call over the padded batch (a right-padded answer's tokens never attend to its
    padding, whose labels are ignored), without computing the padding of short answers up to the longest one.
    Under ``torch.compile`` the batch is decoded in one call: the groups depend on the data, which would
    break the graph at every step.
    """
    if torch.compiler.is_compiling():
        return decode_answers(
            model, question_embeds, question_mask, answer_ids, answer_mask, labels=labels, reduction="none"
        ).loss
    lengths = answer_mask.sum(dim=1).tolist()
    losses = []
    rows_in_order = []
    for rows, width in answer_groups(lengths):
        index = torch.tensor(rows, device=answer_ids.device)
        output = decode_answers(
            model,
            question_embeds.index_select(0, index),
            question_mask.index_select(0, index),
            answer_ids.index_select(0, index)[:, :width],
            answer_mask.index_select(0, index)[:, :width],
            labels=labels.index_select(0, index)[:, :width],
            reduction="none",
        )
        losses.append(output.loss)
        rows_in_order.extend(rows)
    # Back to the batch's order (the losses are per row).
    return torch.cat(losses)[torch.tensor(rows_in_order, device=answer_ids.device).argsort()]


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
    # Each distinct image encoded once (see data.collator.VqaCollator), its keys and values projected once.
    question_embeds = encode_questions(model, image_embeds, input_ids, attention_mask, image_index)
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


class SharedImageBlipForQuestionAnswering(BlipForQuestionAnswering):
    """`BlipForQuestionAnswering` whose forward can encode each distinct image of a batch once, and whose loss
    is normalised by the answer tokens of the whole step (all processes), as the Trainer expects.

    With ``image_index`` (one entry per question), ``pixel_values`` holds each distinct image once and
    question i is answered about image ``image_index[i]``: the image encoder runs once per image instead
    of once per question, with the same gradient. ``image_embeds`` (the image encoder's outputs, one per
    distinct image) may replace ``pixel_values`` when they are already known (`embedding_cache`). Without
    any of these, the forward is transformers' own. The weights and the saved files are those of
    `BlipForQuestionAnswering`.
    """

    # The Trainer passes `num_items_in_batch` (answer tokens in the whole step: all processes, all accumulated
    # micro-batches) and then expects a sum over this batch divided by it. transformers' BLIP ignores it and
    # returns a per-batch mean, which the Trainer multiplies by the number of processes: a DDP run then
    # trains on N times the loss, and each process weighs its own tokens. Here the loss is what it expects.
    accepts_loss_kwargs = True
    # Training decodes answers in groups of similar length (`answer_losses`). Off under parameter sharding (FSDP,
    # DeepSpeed ZeRO-3), which gathers the decoder's weights at every call: every rank must call it equally often.
    decode_in_length_groups = True

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        image_index: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        image_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BlipTextVisionModelOutput:
        if image_index is None and num_items_in_batch is None and image_embeds is None:
            return super().forward(
                input_ids=input_ids,
                pixel_values=pixel_values,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                attention_mask=attention_mask,
                labels=labels,
                interpolate_pos_encoding=interpolate_pos_encoding,
                **kwargs,
            )
        if decoder_input_ids is None:
            raise ValueError("Pass decoder_input_ids ([DEC] + answer) and labels to train; use generate to answer.")
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass either pixel_values or image_embeds (image-encoder outputs, e.g. kept ones).")
        if image_embeds is None:
            image_embeds = encode_images(self, pixel_values, interpolate_pos_encoding)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        question_embeds = encode_questions(self, image_embeds, input_ids, attention_mask, image_index)
        per_image = image_embeds
        if image_index is not None:
            image_embeds = image_embeds.index_select(0, image_index)
        loss = None
        grouped = self.decode_in_length_groups and decoder_attention_mask is not None
        if labels is not None and num_items_in_batch is not None and grouped:
            # Training: answers of similar length decoded together (a findings report does not pad a yes/no).
            loss = (
                answer_losses(
                    self, question_embeds, attention_mask, decoder_input_ids, decoder_attention_mask, labels
                ).sum()
                / num_items_in_batch
            )
        else:
            answer = decode_answers(
                self,
                question_embeds,
                attention_mask,
                decoder_input_ids,
                decoder_attention_mask,
                labels=labels,
                reduction="mean" if num_items_in_batch is None else "none",
            )
            if labels is not None:
                # reduction "none" gives each answer's summed token loss.
                loss = answer.loss.mean() if num_items_in_batch is None else answer.loss.sum() / num_items_in_batch
        return BlipTextVisionModelOutput(
            loss=loss,
            image_embeds=image_embeds,
            last_hidden_state=per_image,
        )

    def enable_input_require_grads(self) -> None:
        """transformers' hook, made safe for BLIP's text embeddings, which add the position embeddings in place.

        Activation checkpointing with frozen word embeddings (always the case under LoRA) makes transformers
        hook each input embedding so that its output requires grad; for a frozen embedding that output is a
        leaf, and BLIP's ``embeddings += position_embeddings`` then fails ("a leaf Variable that requires grad
        is being used in an in-place operation"). Here the hook returns a non-leaf copy instead.
        """

        def requires_grad_not_leaf(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            return output if output.requires_grad else output.requires_grad_(True).clone()

        embeddings = {}
        for module in self.modules():
            if isinstance(module, PreTrainedModel):
                found = module.get_input_embeddings()
                if found is not None:
                    embeddings[id(found)] = found
        self._require_grads_hooks = [e.register_forward_hook(requires_grad_not_leaf) for e in embeddings.values()]

    def save_pretrained(self, *args, **kwargs):
        # Saved as the plain transformers class (config.architectures): sharing is a batching detail.
        # Restored to the class it had, which FSDP2 (fully_shard) replaces with a subclass of its own.
        own_class = self.__class__
        self.__class__ = BlipForQuestionAnswering
        try:
            return self.save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = own_class


def check_tokenizer_matches(config: BlipConfig, processor: BlipProcessor) -> None:
    """Fail early when the tokenizer and the model disagree on the special tokens generation relies on."""
    tokenizer = processor.tokenizer
    text_config = config.text_config
    expected = {
        "bos_token_id ([DEC], the decoder start)": (text_config.bos_token_id, tokenizer.bos_token_id),
        "pad_token_id": (text_config.pad_token_id, tokenizer.pad_token_id),
        "sep_token_id (the answer end)": (text_config.sep_token_id, tokenizer.sep_token_id),
    }
    mismatches = [f"{name}: model {m}, tokenizer {t}" for name, (m, t) in expected.items() if m != t]
    if len(tokenizer) > text_config.vocab_size:
        mismatches.append(f"vocabulary: tokenizer has {len(tokenizer)} tokens, model {text_config.vocab_size}")
    if mismatches:
        raise ValueError(
            "The processor does not match the model: " + "; ".join(mismatches) + ". Use the processor saved "
            "with the model (--processor_name) or the same config folder."
        )


def set_label_smoothing(model: BlipForQuestionAnswering, label_smoothing: float) -> None:
    # The decoder copies the value at construction time; set both so the saved config says what was used.
    model.config.text_config.label_smoothing = label_smoothing
    model.text_decoder.label_smoothing = label_smoothing


@torch.no_grad()
def resize_image_size(model: BlipForQuestionAnswering, image_size: int) -> None:
    """Interpolate the ViT position embeddings once to a new square image size.

    This is exactly what `interpolate_pos_encoding=True` computes on every forward pass, done once, so the
    saved model runs at the new size with plain transformers and no extra flag.
    """
    embeddings = model.vision_model.embeddings
    patch = embeddings.patch_size
    if image_size % patch:
        raise ValueError(f"--image_size {image_size} must be a multiple of the patch size {patch}.")
    old_size = model.config.vision_config.image_size
    grid = image_size // patch
    dummy = torch.zeros(1, grid * grid + 1, embeddings.embed_dim, dtype=embeddings.position_embedding.dtype)
    new_positions = embeddings.interpolate_pos_encoding(dummy, image_size, image_size).detach().clone()
    embeddings.position_embedding = nn.Parameter(new_positions)
    embeddings.image_size = image_size
    embeddings.num_patches = grid * grid
    embeddings.num_positions = grid * grid + 1
    model.config.vision_config.image_size = image_size
    logger.info(
        "Interpolated position embeddings from %d px to %d px (%dx%d patches)",
        old_size,
        image_size,
        grid,
        grid,
    )


def freeze(model: torch.nn.Module, **parts: bool) -> None:
    """Stop gradients into the named submodules (``vision_model=True``, ``text_encoder=True``, ``qformer=True``,
    ``language_model=True``; BLIP-2 also keeps ``query_tokens`` with the Q-Former)."""
    frozen = [name for name, wanted in parts.items() if wanted]
    for name in frozen:
        getattr(model, name).requires_grad_(False)
        if name == "qformer" and hasattr(model, "query_tokens"):
            model.query_tokens.requires_grad_(False)
    if frozen:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info("Frozen: %s; trainable parameters %.2fM of %.2fM", ", ".join(frozen), trainable / 1e6, total / 1e6)
