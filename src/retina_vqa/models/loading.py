"""Loading a BLIP VQA model and its processor, for training (`load_model`) or answering (`load_for_inference`).

Both go through `prepare_model`: the checkpoint must be a `BlipForQuestionAnswering` whose processor
matches it, and its attention runs fused or eager, always with the cross-attention mask fix.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    BlipForQuestionAnswering,
    BlipProcessor,
)

from ..arguments import ModelArguments
from .attention import set_attention_implementation
from .blip import (
    SharedImageBlipForQuestionAnswering,
    check_tokenizer_matches,
    freeze,
    resize_image_size,
    set_label_smoothing,
)
from .generation_config import apply_saved_answer_generation

logger = logging.getLogger(__name__)


def _hub_kwargs(model_args: ModelArguments) -> dict:
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


def prepare_model(model: Any, processor: Any, attn_implementation: str, name: str | None = None) -> None:
    """Check that `model` is a BLIP VQA model matching `processor`, and set its attention (in place).

    Fused (``"sdpa"``) or eager attention, both with the cross-attention mask fix: without it the answer
    decoder attends to question padding (see models/attention.py).
    """
    if not isinstance(model, BlipForQuestionAnswering):
        raise ValueError(
            f"{name or 'The checkpoint'} loads as {type(model).__name__}, but retina-vqa trains and answers with "
            "BlipForQuestionAnswering: use a BLIP VQA checkpoint such as Salesforce/blip-vqa-base or a folder "
            "saved by run_vqa.py."
        )
    check_tokenizer_matches(model.config, processor)
    set_attention_implementation(model, attn_implementation)


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
    prepare_model(model, processor, model_args.attn_implementation, name=model_args.model_name_or_path)
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


def load_for_inference(
    model_name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[BlipForQuestionAnswering, Any]:
    """Load a saved BLIP VQA model and its processor, ready to answer.

    The model is in eval mode on `device` (default: ``cuda`` if available, else ``cpu``), prepared by
    `prepare_model`, with the answer length and beams saved with the model (``generation_config.json``) given
    to its text decoder, so ``model.generate`` uses them too.

    Raises:
        OSError: no model or processor at `model_name_or_path`.
        ValueError: the checkpoint is not a `BlipForQuestionAnswering`, or its processor does not match it.
    """
    name = os.fspath(model_name_or_path)
    # A hub id is "name" or "org/name"; anything else that is not a folder is a mistyped path.
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not os.path.isdir(name):
        raise OSError(f"{name!r}: no such folder (train one with run_vqa.py --output_dir).")
    processor = AutoProcessor.from_pretrained(name)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(name)
    prepare_model(model, processor, attn_implementation, name=name)
    apply_saved_answer_generation(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(torch.device(device)).eval()
    return model, processor
