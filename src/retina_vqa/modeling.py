"""Building the BLIP VQA model and its processor: from a checkpoint, or from a config (from scratch).

Also owns the model-level options of the recipe: label smoothing, freezing encoders, and changing the
image size of a pretrained checkpoint.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipProcessor,
)
from transformers.models.blip.modeling_blip import BlipTextVisionModelOutput

from .arguments import ModelArguments
from .attention import set_attention_implementation
from .generation import encode_images, encode_questions

logger = logging.getLogger(__name__)


def _hub_kwargs(model_args: ModelArguments) -> dict:
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


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
        per_image = image_embeds
        if image_index is not None:
            image_embeds = image_embeds.index_select(0, image_index)
        question_embeds = encode_questions(self, image_embeds, input_ids, attention_mask)
        answer = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=attention_mask,
            labels=labels,
            reduction="mean" if num_items_in_batch is None else "none",
        )
        loss = None
        if labels is not None:
            # reduction "none" gives each answer's summed token loss.
            loss = answer.loss.mean() if num_items_in_batch is None else answer.loss.sum() / num_items_in_batch
        return BlipTextVisionModelOutput(
            loss=loss,
            image_embeds=image_embeds,
            last_hidden_state=per_image,
        )

    def save_pretrained(self, *args, **kwargs):
        # Saved as the plain transformers class (config.architectures): sharing is a batching detail.
        self.__class__ = BlipForQuestionAnswering
        try:
            return self.save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = SharedImageBlipForQuestionAnswering


def load_processor(model_args: ModelArguments) -> BlipProcessor:
    """The tokenizer + image processor, resized to `--image_size` when given."""
    name = model_args.processor_name or model_args.model_name_or_path or model_args.config_name
    try:
        processor = AutoProcessor.from_pretrained(name, **_hub_kwargs(model_args))
    except (OSError, ValueError) as error:  # ValueError: a folder without processor files
        raise OSError(
            f"Could not load a processor from {name!r}: {error}\nPass --processor_name with a folder that "
            "holds tokenizer and preprocessor files (e.g. configs/blip-tiny), or check the hub id and your "
            "network / HF_HUB_OFFLINE setting."
        ) from error
    if getattr(processor.tokenizer, "bos_token_id", None) is None:
        raise ValueError(
            f"The tokenizer of {name!r} has no bos token. BLIP's answer decoder starts from [DEC]: use the "
            "tokenizer of Salesforce/blip-vqa-base or one with bos_token='[DEC]'."
        )
    if model_args.image_size is not None:
        processor.image_processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    return processor


def load_model(model_args: ModelArguments, processor: BlipProcessor) -> BlipForQuestionAnswering:
    """Load (or initialise) `BlipForQuestionAnswering` and apply the recipe's model options."""
    hub_kwargs = _hub_kwargs(model_args)
    if model_args.model_name_or_path is not None:
        model = AutoModelForVisualQuestionAnswering.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
    else:
        config = AutoConfig.from_pretrained(model_args.config_name, **hub_kwargs)
        if model_args.image_size is not None:
            # From scratch there is nothing to interpolate: build the embeddings at the right size.
            config.vision_config.image_size = model_args.image_size
        if config.vision_config.initializer_range < 1e-4:
            # BlipVisionConfig defaults to 1e-10, meant for loading pretrained weights: from scratch it
            # gives a ViT of near-zero weights whose gradients vanish, so the model never uses the image.
            logger.warning(
                "%s sets vision_config.initializer_range=%g, which initialises the image encoder to ~0; "
                "using %g (the text initializer_range) instead.",
                model_args.config_name,
                config.vision_config.initializer_range,
                config.text_config.initializer_range,
            )
            config.vision_config.initializer_range = config.text_config.initializer_range
        model = AutoModelForVisualQuestionAnswering.from_config(config)
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("Training a new BLIP from scratch: %.2fM parameters", n_params / 1e6)
    if not isinstance(model, BlipForQuestionAnswering):
        raise ValueError(
            f"This recipe fine-tunes BlipForQuestionAnswering, but the checkpoint loads as "
            f"{type(model).__name__}. Use a BLIP VQA checkpoint such as Salesforce/blip-vqa-base."
        )
    check_tokenizer_matches(model.config, processor)
    # Fused or eager attention, both with the cross-attention mask fix: without it the answer decoder
    # attends to question padding (see attention.py).
    set_attention_implementation(model, model_args.attn_implementation)
    model.__class__ = SharedImageBlipForQuestionAnswering
    set_label_smoothing(model, model_args.label_smoothing)
    if model_args.image_size is not None and model_args.image_size != model.config.vision_config.image_size:
        resize_image_size(model, model_args.image_size)
    freeze(model, vision=model_args.freeze_vision_encoder, text=model_args.freeze_text_encoder)
    dropout = model.config.vision_config.attention_dropout
    if model_args.cache_image_embeddings and dropout > 0:
        raise ValueError(
            f"--cache_image_embeddings reuses the image encoder's outputs, but its attention dropout is {dropout}: "
            "the outputs would differ from pass to pass while training. Set vision_config.attention_dropout to 0 "
            "or drop --cache_image_embeddings."
        )
    return model


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


def freeze(model: BlipForQuestionAnswering, vision: bool, text: bool) -> None:
    """Stop gradients into the image encoder and/or the question encoder."""
    parts = {"vision_model": vision, "text_encoder": text}
    for name, frozen in parts.items():
        if frozen:
            getattr(model, name).requires_grad_(False)
    if vision or text:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        logger.info(
            "Frozen: %s; trainable parameters %.2fM of %.2fM",
            ", ".join(n for n, f in parts.items() if f),
            trainable / 1e6,
            total / 1e6,
        )
