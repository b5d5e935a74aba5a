"""LoRA adapters (through peft) for BLIP VQA, BLIP-2 and InstructBLIP: which layers, wrapping, merging, saving.

Owns the default LoRA targets of each model family (`DEFAULT_TARGETS`), `apply_lora` (wrap a loaded model in a
`peft.PeftModel` whose only trainable parameters are the adapters), `merge_lora` (fold the adapters back into
a plain transformers model that saves and loads without peft), and `save_adapter` / `load_adapter`.

**Targets.** LoRA adds a low-rank update to the layers it targets; the defaults put it where the question meets
the image, in every part that encodes or reads it:

* BLIP (``"blip"``): the image encoder's fused ``qkv``, and ``query``/``value`` of every self- and
  cross-attention of the question encoder and of the answer decoder. Never the answer decoder's vocabulary head
  (``text_decoder.cls.predictions.*``). With ``--freeze_vision_encoder`` the image encoder gets no adapter (the
  question encoder and answer decoder keep theirs), and targets inside it are refused: the encoder's outputs stay
  those of the loaded model, which ``--cache_image_embeddings`` relies on.
* BLIP-2 (``"blip-2"``) and InstructBLIP (``"instructblip"``): the Q-Former's ``query``/``value`` (self- and
  cross-attention) and the language model's ``q_proj``/``v_proj`` (OPT, LLaMA/Vicuna) or ``q``/``v`` (T5). peft's
  own BLIP-2 default (``["q", "v", "q_proj", "v_proj"]``) adapts the language model only, so the Q-Former,
  the only part that turns a fundus image into something the language model reads, would stay as pretrained on
  natural images. The image encoder (a frozen ViT in BLIP-2's recipe) is left alone.

The targets are regular expressions matched against full module names (peft: ``re.fullmatch``), so they hit
exactly the intended layers: the bare suffixes ``query``/``value`` would be fine for BLIP, but ``q``/``v``
say nothing about which part of a BLIP-2 they are in. tests/models/test_lora.py lists the modules they match.

**The vocabulary head is never adapted**, whatever the targets say (peft ``exclude_modules``): it is tied to the
word embeddings (BLIP's answer decoder, OPT, T5), and merging a LoRA update into a tied weight changes the
input embeddings too, so the merged model would answer differently from the adapter model. (peft's
``"all-linear"`` would wrap BLIP's head: `BlipForQuestionAnswering.get_output_embeddings()` is None, so peft
does not recognise it.) Targets that name a head module explicitly are refused.

**task_type.** None (a plain `PeftModel`), for every family. peft's task-specific wrappers (``QUESTION_ANS``,
``CAUSAL_LM``, ``SEQ_2_SEQ_LM``) call the model with their own fixed keyword list, ``inputs_embeds=None``,
``output_attentions=None``, ... included; `BlipForQuestionAnswering.forward` hands its extra keywords to the image
encoder, which already passes ``inputs_embeds``: ``TypeError: ... got multiple values for keyword argument
'inputs_embeds'`` (transformers 5.24, peft 0.21). The recipe's forward with ``image_index``/``num_items_in_batch``
would not notice (it ignores those keywords), but every loss-only evaluation goes through the plain forward.
BLIP-2 and InstructBLIP run with any of them, but none adds anything for LoRA (they matter for prompt
learning), and ``CAUSAL_LM`` would misname a T5 model. The plain `PeftModel` forwards positional and keyword
arguments unchanged, so the model sees exactly what the Trainer passes.

**Using the wrapped model.** A `PeftModel` forwards attribute reads it does not have itself to the transformers
model (`PeftModel.__getattr__` to its `LoraModel`, whose `__getattr__` goes to the model): ``model.vision_model``,
``model.text_encoder``, ``model.text_decoder``, ``model.config``, ``model.decoder_start_token_id`` are the
transformers model's own, with the LoRA layers inside. So `models.blip.encode_images`, `generate_answers` and the
recipe's `SharedImageBlipForQuestionAnswering.forward` take the `PeftModel` as it is. What does not forward:
``isinstance`` (a `PeftModel` is no `BlipForQuestionAnswering`), attribute *assignment* on the top object
(``model.x = ...`` lands on the wrapper) and ``model.__class__ = ...``: use `base_model(model)` for those, and
apply LoRA after `models.loading.load_model` has swapped the class in.

**Activation checkpointing** (``--gradient_checkpointing``). Enabling it with frozen word embeddings (always
the case under LoRA) makes transformers hook each input embedding so that its output requires grad. For BLIP
that output is a leaf, and `BlipTextEmbeddings` adds the position embeddings to it in place: ``RuntimeError: a
leaf Variable that requires grad is being used in an in-place operation`` (transformers 5.24).
`SharedImageBlipForQuestionAnswering.enable_input_require_grads` hooks a non-leaf copy instead. BLIP-2 and
InstructBLIP train with transformers' default, non-reentrant checkpointing; with ``use_reentrant: true`` their
Q-Former layers get inputs that carry no gradient (frozen query tokens and image encoder), so its adapters would
silently learn nothing: `check_activation_checkpointing` refuses that before training. Adapter gradients equal
those without checkpointing (tests/models/test_lora.py).

**Checkpoints.** The Trainer saves a `PeftModel` with its own `save_pretrained`: a checkpoint holds
``adapter_config.json`` and ``adapter_model.safetensors`` (the adapters only) next to the optimizer and trainer
state, and `Trainer.train(resume_from_checkpoint=...)` loads them back with `PeftModel.load_adapter`. The frozen
weights are not in it: a resume must rebuild the same base model (the same pretrained checkpoint).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

# The entry script's flags, named in the error messages.
FLAGS = {
    "r": "--lora_r",
    "alpha": "--lora_alpha",
    "dropout": "--lora_dropout",
    "target_modules": "--lora_target_modules",
}

_BLIP_VISION_TARGETS = r"vision_model\.encoder\.layers\.\d+\.self_attn\.qkv"
_BLIP_TEXT_TARGETS = (
    r"text_(?:encoder|decoder\.bert)\.encoder\.layer\.\d+\.(?:attention|crossattention)\.self\.(?:query|value)"
)
_BLIP_TARGETS = f"{_BLIP_VISION_TARGETS}|{_BLIP_TEXT_TARGETS}"
_QFORMER_TARGETS = r"qformer\.encoder\.layer\.\d+\.(?:attention|crossattention)\.attention\.(?:query|value)"
# OPT (language_model.model.decoder.layers.N.self_attn.q_proj), LLaMA/Vicuna (language_model.model.layers.N...)
# and T5 (language_model.{encoder,decoder}.block.N.layer.M.{SelfAttention,EncDecAttention}.q).
_LANGUAGE_MODEL_TARGETS = r"language_model\.(?:.+\.)?(?:q_proj|v_proj|q|v)"

DEFAULT_TARGETS: dict[str, str] = {
    "blip": _BLIP_TARGETS,
    "blip-2": f"{_QFORMER_TARGETS}|{_LANGUAGE_MODEL_TARGETS}",
    "instructblip": f"{_QFORMER_TARGETS}|{_LANGUAGE_MODEL_TARGETS}",
}
"""LoRA targets per ``config.model_type``: regular expressions over full module names (see the module docstring)."""

VOCABULARY_HEADS: dict[str, str] = {
    "blip": r"text_decoder\.cls\.predictions(?:\..+)?",
    "blip-2": r"language_model\.lm_head",
    "instructblip": r"language_model\.lm_head",
}
"""The output head of each family (tied to the word embeddings), never given an adapter."""

# The image encoder of every family: adapters there change its outputs, so with --freeze_vision_encoder it gets none.
IMAGE_ENCODER = r"vision_model(?:\..+)?"


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a `PeftModel` (the LoRA layers stay in it), or `model` itself.

    Needed for ``isinstance`` checks, for assigning attributes or ``__class__`` on the model object; reading
    attributes works on the `PeftModel` directly.
    """
    return model.get_base_model() if isinstance(model, PeftModel) else model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (tied weights counted once)."""
    parameters = list(model.parameters())  # nn.Module.parameters() yields a shared tensor once
    return {
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "total_parameters": sum(p.numel() for p in parameters),
    }


def _family(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", type(model).__name__)


def _describe_linear_layers(model: nn.Module, examples: int = 4) -> str:
    """The distinct last names of the model's linear layers, and a few full names: what targets can match."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in names})
    return f"its linear layers are named {', '.join(suffixes)} (e.g. {', '.join(names[:examples])})"


def _check_arguments(r: int, alpha: float, dropout: float) -> None:
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"{FLAGS['r']} {r!r}: the LoRA rank must be a positive integer (typically 8 to 64).")
    if not alpha > 0:
        raise ValueError(f"{FLAGS['alpha']} {alpha!r}: the LoRA scaling alpha must be positive (often 2 x the rank).")
    if not 0 <= dropout < 1:
        raise ValueError(f"{FLAGS['dropout']} {dropout!r}: the LoRA dropout must be in [0, 1) (e.g. 0.05).")


def _resolve_targets(
    model: nn.Module, family: str, target_modules: str | Sequence[str] | None, frozen_image_encoder: bool = False
) -> str | list[str]:
    if target_modules is None:
        if family not in DEFAULT_TARGETS:
            raise ValueError(
                f"No default LoRA targets for model type {family!r} (known: {', '.join(DEFAULT_TARGETS)}). Pass "
                f"{FLAGS['target_modules']} with module names, or a regex matched against full names; "
                f"{_describe_linear_layers(model)}."
            )
        if frozen_image_encoder and family == "blip":  # the question encoder and answer decoder only
            return _BLIP_TEXT_TARGETS
        return DEFAULT_TARGETS[family]
    if isinstance(target_modules, str):
        return target_modules
    return list(target_modules)


def _check_matches(model: nn.Module, family: str, config: LoraConfig, frozen_image_encoder: bool = False) -> None:
    """Fail before peft does, with what the model offers; refuse targets that name the vocabulary head, or the
    image encoder when it is frozen."""
    if config.target_modules == "all-linear":  # peft expands it; there is always a linear layer
        if frozen_image_encoder:
            raise ValueError(
                f"{FLAGS['target_modules']} all-linear puts adapters into the image encoder, which "
                "--freeze_vision_encoder keeps as it is: name the layers to adapt (e.g. query value), or drop "
                "--freeze_vision_encoder."
            )
        return
    targets = config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules)
    head = VOCABULARY_HEADS.get(family)
    # peft's own matcher (re.fullmatch for a string, suffix match for a list), without the exclusion.
    probe = LoraConfig(target_modules=config.target_modules)
    matched = [name for name, _ in model.named_modules() if name and check_target_module_exists(probe, name)]
    on_head = [name for name in matched if head is not None and re.fullmatch(head, name)]
    if on_head:
        raise ValueError(
            f"{FLAGS['target_modules']} {targets!r} matches the vocabulary head ({', '.join(on_head)}), which is tied "
            "to the word embeddings: merging a LoRA update into it would change the embeddings too. Leave it out."
        )
    in_image_encoder = [name for name in matched if re.fullmatch(IMAGE_ENCODER, name)]
    if frozen_image_encoder and in_image_encoder:
        raise ValueError(
            f"{FLAGS['target_modules']} {targets!r} matches layers of the image encoder ({in_image_encoder[0]}, ... "
            f"{len(in_image_encoder)} in all), which --freeze_vision_encoder keeps as it is: adapters there would "
            "train it after all (and make kept image-encoder outputs stale). Leave them out, or drop "
            "--freeze_vision_encoder."
        )
    if not matched:
        raise ValueError(
            f"{FLAGS['target_modules']} {targets!r} matches no module of this {family} model: "
            f"{_describe_linear_layers(model)}. Give last names (a list, e.g. query value) or one regex over full "
            "names, or leave the flag out for the defaults."
        )


def apply_lora(
    model: PreTrainedModel,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: str | Sequence[str] | None = None,
    frozen_image_encoder: bool = False,
) -> PeftModel:
    """Wrap `model` in a `PeftModel` with LoRA adapters; everything else is frozen (peft does that).

    `frozen_image_encoder` (``--freeze_vision_encoder``): the image encoder gets no adapter, so its outputs stay
    those of the loaded model: BLIP's defaults leave out its ``qkv``, and targets inside it are refused.

    `target_modules`: None for the family's `DEFAULT_TARGETS`; a regex string (``re.fullmatch`` over full module
    names); a list of names, each matching a module whose name is it or ends in ``.name``; or ``"all-linear"``.
    The vocabulary head is excluded in every case. The model is wrapped in place (its layers are replaced),
    with ``task_type=None`` (see the module docstring). Call it on the model `load_model` returns: after the
    class swap, image resizing and freezing.

    Raises:
        ValueError: a rank, alpha or dropout out of range; no default targets for the model type; targets that
            match nothing, name the vocabulary head, or name the image encoder while it is frozen.
    """
    _check_arguments(r, alpha, dropout)
    family = _family(model)
    head = VOCABULARY_HEADS.get(family)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=_resolve_targets(model, family, target_modules, frozen_image_encoder),
        exclude_modules=head,
        bias="none",
        task_type=None,
    )
    _check_matches(model, family, config, frozen_image_encoder)
    peft_model = get_peft_model(model, config)
    counts = parameter_counts(peft_model)
    logger.info(
        "LoRA (r=%d, alpha=%g, dropout=%g) on %d modules of the %s model: trainable parameters %d of %d (%.3f%%)",
        r,
        alpha,
        dropout,
        len(peft_model.base_model.targeted_module_names),
        family,
        counts["trainable_parameters"],
        counts["total_parameters"],
        100 * counts["trainable_parameters"] / counts["total_parameters"],
    )
    return peft_model


def check_activation_checkpointing(family: str, lora_r: int, checkpointing: bool, kwargs: dict | None) -> None:
    """Refuse reentrant activation checkpointing where it would leave adapters without gradients (see the module
    docstring): BLIP-2 / InstructBLIP with LoRA."""
    if not (lora_r and checkpointing and family != "blip" and (kwargs or {}).get("use_reentrant")):
        return
    raise ValueError(
        f"--gradient_checkpointing with use_reentrant=true and --lora_r on a {family} model: reentrant checkpointing "
        "passes no gradient through the Q-Former's frozen inputs, so its adapters would not train. Drop "
        "use_reentrant from --gradient_checkpointing_kwargs (the non-reentrant default works)."
    )


def merge_lora(model: PeftModel) -> PreTrainedModel:
    """Fold the adapters into their layers and return the transformers model (its class as before wrapping).

    Its `save_pretrained` writes a plain transformers checkpoint (BLIP: `BlipForQuestionAnswering`, BLIP-2:
    `Blip2ForConditionalGeneration`) that loads without peft and answers as the adapter model did. The
    `PeftModel` is used up (its layers are replaced in place). The parameters stay frozen as peft left them:
    ``requires_grad_(True)`` to train the merged model further.
    """
    if not isinstance(model, PeftModel):
        raise TypeError(f"merge_lora takes the PeftModel that apply_lora returned, not {type(model).__name__}.")
    # safe_merge: check the merged weights for NaN/inf (a diverged adapter) before replacing the layers.
    return model.merge_and_unload(safe_merge=True)


def save_adapter(model: PeftModel, output_dir: str | Path) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (the adapters only) to `output_dir`."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"save_adapter takes the PeftModel that apply_lora returned, not {type(model).__name__}.")
    model.save_pretrained(str(output_dir))


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """Wrap `model` (the same base model the adapter was trained on) with the adapter saved in `adapter_dir`.

    ``is_trainable=True`` to train on (the adapters then require gradients); the default is for answering.
    """
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
