"""The model and processor a run's flags ask for (`ModelArguments`): read, built or loaded, then prepared.

`load_processor` (resized to ``--image_size``), `load_model` (a checkpoint, or a config trained from scratch; a
BLIP-2 / InstructBLIP around a pretrained image encoder with ``--vision_model_name_or_path``; frozen parts, label
smoothing, the recipe's BLIP class), `checkpoint_family` and `load_family` (read from the config before anything
is built). The argument-free half (`models.loading.prepare_model`, `load_for_inference`) lives with the models.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    BlipProcessor,
)

from ..arguments import ModelArguments
from ..models.blip import SharedImageBlipForQuestionAnswering, freeze, resize_image_size, set_label_smoothing
from ..models.blip2 import init_query_tokens, model_family
from ..models.family import Family
from ..models.generation_config import configure_answer_generation
from ..models.loading import prepare_model
from ..models.lora import apply_lora

logger = logging.getLogger(__name__)


def _hub_kwargs(model_args: ModelArguments) -> dict:
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


def load_family(model_args: ModelArguments, processor: Any) -> Family:
    """The family of the model `model_args` names (BLIP-2 / InstructBLIP: with the prompt layout its processor
    gives), read from its config before anything is built."""
    return Family.of(_checkpoint_config(model_args), processor)


def checkpoint_family(model_args: ModelArguments) -> str:
    """The family of the model `model_args` names (read from its config, before anything is built)."""
    return model_family(_checkpoint_config(model_args))


def _checkpoint_config(model_args: ModelArguments) -> Any:
    """The config `model_args` names, read once per run (the processor, the prompt layout, the precision and the
    model all ask for its family). Read-only: builders that change a config load their own copy."""
    name = model_args.model_name_or_path or model_args.config_name
    return _read_config(name, *sorted(_hub_kwargs(model_args).items()))


@functools.lru_cache(maxsize=8)
def _read_config(name: str, *hub_items: tuple[str, Any]) -> Any:
    return AutoConfig.from_pretrained(name, **dict(hub_items))


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
    if checkpoint_family(model_args) == "blip" and getattr(processor.tokenizer, "bos_token_id", None) is None:
        raise ValueError(
            f"The tokenizer of {name!r} has no bos token. BLIP's answer decoder starts from [DEC]: use the "
            "tokenizer of Salesforce/blip-vqa-base or one with bos_token='[DEC]'."
        )
    if model_args.image_size is not None:
        processor.image_processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    return processor


def load_model(model_args: ModelArguments, processor: BlipProcessor) -> Any:
    """Load (or initialise) the model and apply the recipe's model options."""
    family = checkpoint_family(model_args)
    if family != "blip":
        return _load_prompt_model(model_args, processor, family)
    if model_args.vision_model_name_or_path is not None:
        raise ValueError(
            "--vision_model_name_or_path builds a BLIP-2 / InstructBLIP around a pretrained image encoder; "
            f"{model_args.config_name} is a BLIP VQA config. Drop the flag (or fine-tune a BLIP checkpoint)."
        )
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
    set_label_smoothing(model, 0.1 if model_args.label_smoothing is None else model_args.label_smoothing)
    if model_args.image_size is not None and model_args.image_size != model.config.vision_config.image_size:
        resize_image_size(model, model_args.image_size)
    freeze(model, vision_model=model_args.freeze_vision_encoder, text_encoder=model_args.freeze_text_encoder)
    dropout = model.config.vision_config.attention_dropout
    if model_args.cache_image_embeddings and dropout > 0:
        raise ValueError(
            f"--cache_image_embeddings reuses the image encoder's outputs, but its attention dropout is {dropout}: "
            "the outputs would differ from pass to pass while training. Set vision_config.attention_dropout to 0 "
            "or drop --cache_image_embeddings."
        )
    return model


def _load_prompt_model(model_args: ModelArguments, processor: Any, family: str) -> Any:
    """BLIP-2 / InstructBLIP: from a checkpoint, or from a config (query tokens initialised, as LAVIS does)."""
    refused = {
        "--cache_image_embeddings": model_args.cache_image_embeddings,
        "--freeze_text_encoder (BLIP's question encoder; use --freeze_language_model)": model_args.freeze_text_encoder,
        "--label_smoothing (BLIP's decoder loss; BLIP-2's language-model loss takes none)": model_args.label_smoothing,
        "--image_size on a pretrained checkpoint": model_args.image_size and model_args.model_name_or_path,
    }
    given = [flag for flag, value in refused.items() if value]
    if given:
        raise ValueError(f"{', '.join(given)}: BLIP VQA options, not available for {family} models. Drop them.")
    if model_args.model_name_or_path is not None:
        model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **_hub_kwargs(model_args))
    else:
        config = AutoConfig.from_pretrained(model_args.config_name, **_hub_kwargs(model_args))
        vision_source = None
        if model_args.vision_model_name_or_path is not None:
            vision_source = _pretrained_vision_model(model_args, processor)
            _take_vision_config(config, vision_source.config, model_args.vision_model_name_or_path)
            if model_args.image_size not in (None, config.vision_config.image_size):
                raise ValueError(
                    f"--image_size {model_args.image_size}, but the image encoder of --vision_model_name_or_path "
                    f"was trained at {config.vision_config.image_size} px: drop --image_size."
                )
        elif model_args.image_size is not None:
            config.vision_config.image_size = model_args.image_size
        model = AutoModelForImageTextToText.from_config(config)
        # transformers starts the query tokens at zero: identical queries, and a Q-Former LayerNorm of zero whose
        # gradient swamps every other under clipping (models/tiny_blip2.py).
        init_query_tokens(model)
        if vision_source is not None:
            model.vision_model.load_state_dict(vision_source.state_dict(), strict=True)
            logger.info("Image encoder taken from %s", model_args.vision_model_name_or_path)
        logger.info("Training a new %s from scratch: %.2fM parameters", family, model.num_parameters() / 1e6)
    prepare_model(model, processor, model_args.attn_implementation, name=model_args.model_name_or_path)
    freeze(
        model,
        vision_model=model_args.freeze_vision_encoder,
        language_model=model_args.freeze_language_model,
        qformer=model_args.freeze_qformer,
    )
    return model


# The image-encoder settings a BLIP-2 vision config takes from a pretrained BLIP or BLIP-2 image encoder.
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "layer_norm_eps",
    "patch_size",
    "image_size",
    "hidden_act",
    "attention_dropout",
)


def _pretrained_vision_model(model_args: ModelArguments, processor: Any) -> torch.nn.Module:
    """The image encoder of `--vision_model_name_or_path` (BLIP VQA or BLIP-2/InstructBLIP), checked against the
    run's image processor: features learnt on differently normalised pixels would be silently wrong."""
    name = model_args.vision_model_name_or_path
    hub_kwargs = _hub_kwargs(model_args)
    try:
        family = model_family(AutoConfig.from_pretrained(name, **hub_kwargs))
        source_processor = AutoProcessor.from_pretrained(name, **hub_kwargs).image_processor
    except (OSError, ValueError) as error:
        raise OSError(
            f"--vision_model_name_or_path {name!r}: {error}\nGive a BLIP VQA or BLIP-2 checkpoint folder (e.g. the "
            "--output_dir of a BLIP run such as outputs/demo) or hub id, with its processor files."
        ) from error
    ours = processor.image_processor
    for key in ("image_mean", "image_std"):
        theirs, mine = list(getattr(source_processor, key)), list(getattr(ours, key))
        if not torch.allclose(torch.tensor(theirs), torch.tensor(mine)):
            raise ValueError(
                f"--vision_model_name_or_path {name!r} was trained on pixels normalised with {key}={theirs}, this "
                f"run's processor uses {mine}: its features would not fit. Use a processor with the same "
                "normalisation (--processor_name) or another image encoder."
            )
    model_class = AutoModelForVisualQuestionAnswering if family == "blip" else AutoModelForImageTextToText
    return model_class.from_pretrained(name, **hub_kwargs).vision_model


def _take_vision_config(config: Any, vision_config: Any, name: str) -> None:
    """Give the new model `vision_config`'s image encoder, and its Q-Former cross-attention the matching width."""
    for key in _VISION_FIELDS:
        setattr(config.vision_config, key, getattr(vision_config, key))
    # BLIP's qkv always has a bias; BLIP-2's config says whether it has one.
    config.vision_config.qkv_bias = getattr(vision_config, "qkv_bias", True)
    config.qformer_config.encoder_hidden_size = vision_config.hidden_size
    logger.info(
        "Image encoder of %s: %d layers of width %d at %d px, patch %d",
        name,
        vision_config.num_hidden_layers,
        vision_config.hidden_size,
        vision_config.image_size,
        vision_config.patch_size,
    )


def load_training_model(
    model_args: ModelArguments, processor: Any, family: Family, max_answer_length: int, num_beams: int, prompt: str
) -> Any:
    """`load_model`, wrapped in LoRA adapters with ``--lora_r``, carrying what it saves for answering: the answer
    length and beams of evaluation (``generation_config.json``; BLIP: ``[DEC]`` start, ``[SEP]`` end) and, for
    BLIP-2 / InstructBLIP, the prompt template in ``config.json`` (predict asks the way training did)."""
    model = load_model(model_args, processor)
    if model_args.lora_r:
        model = apply_lora(
            model,
            model_args.lora_r,
            model_args.lora_alpha,
            model_args.lora_dropout,
            model_args.lora_target_modules,
            frozen_image_encoder=model_args.freeze_vision_encoder,
        )
    configure_answer_generation(model, max_answer_length, num_beams=num_beams)
    if not family.is_blip:
        model.config.prompt_template = prompt
    return model
