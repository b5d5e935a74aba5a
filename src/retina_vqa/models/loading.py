"""Loading a saved model and its processor to answer (`load_for_inference`), and the checks every loaded model gets.

The family comes from the checkpoint's config (`blip2.model_family`): BLIP VQA (`BlipForQuestionAnswering`),
BLIP-2 or InstructBLIP (`...ForConditionalGeneration`). Answering and training (`training.model_setup`, which
builds the model a run's flags ask for) both go through `prepare_model`: the processor must match the model
(special tokens, ``<image>`` placeholders), and a BLIP's attention runs fused or eager, always with the
cross-attention mask fix.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
    BlipForQuestionAnswering,
    GenerationConfig,
)
from transformers.utils import find_adapter_config_file

from .attention import set_attention_implementation
from .blip import (
    check_tokenizer_matches,
)
from .blip2 import PromptLayout, model_family
from .generation_config import apply_saved_answer_generation

logger = logging.getLogger(__name__)


def prepare_model(model: Any, processor: Any, attn_implementation: str, name: str | None = None) -> None:
    """Check that `model` is a model of a known family matching `processor`, and set a BLIP's attention.

    BLIP: fused (``"sdpa"``) or eager attention, both with the cross-attention mask fix: without it the answer
    decoder attends to question padding (see models/attention.py). BLIP-2 / InstructBLIP: the tokenizer's
    ``<image>`` id and the processor's placeholder count must be the model's (`blip2.PromptLayout`).
    """
    family = model_family(model.config)
    if family != "blip":
        PromptLayout.from_model(model.config, processor)
        return
    if not isinstance(model, BlipForQuestionAnswering):
        raise ValueError(
            f"{name or 'The checkpoint'} loads as {type(model).__name__}, but retina-vqa trains and answers BLIP "
            "VQA with BlipForQuestionAnswering: use a BLIP VQA checkpoint such as Salesforce/blip-vqa-base or a "
            "folder saved by run_vqa.py."
        )
    check_tokenizer_matches(model.config, processor)
    set_attention_implementation(model, attn_implementation)


def adapter_base_model(model_name_or_path: str | os.PathLike) -> str | None:
    """The base model a folder or hub repository of a LoRA adapter (``adapter_config.json``) applies to; None for a
    full model."""
    path = find_adapter_config_file(os.fspath(model_name_or_path))
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)["base_model_name_or_path"]


def load_for_inference(
    model_name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[Any, Any]:
    """Load a saved model (BLIP VQA, BLIP-2 or InstructBLIP) and its processor, ready to answer.

    The model is in eval mode on `device` (default: ``cuda`` if available, else ``cpu``), prepared by
    `prepare_model`; a BLIP gets the answer length and beams saved with the model (``generation_config.json``)
    on its text decoder, so ``model.generate`` uses them too.

    Raises:
        OSError: no model or processor at `model_name_or_path`.
        ValueError: the checkpoint is of no known family, or its processor does not match it.
    """
    name = os.fspath(model_name_or_path)
    # A hub id is "name" or "org/name"; anything else that is not a folder is a mistyped path.
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not os.path.isdir(name):
        raise OSError(f"{name!r}: no such folder (train one with run_vqa.py --output_dir).")
    processor = AutoProcessor.from_pretrained(name)
    # A LoRA adapter (run_vqa.py --merge_lora false): its base model with the adapter applied (peft), and the answer
    # settings of the adapter's folder.
    adapter_base = adapter_base_model(name)
    family = model_family(AutoConfig.from_pretrained(name))
    model_class = AutoModelForVisualQuestionAnswering if family == "blip" else AutoModelForImageTextToText
    if adapter_base is None:
        model = model_class.from_pretrained(name)
    else:  # the base, then the adapter (from_pretrained(folder) would look for the base's weights in the folder)
        # The folder's config (the run's own settings, e.g. its prompt template) over the base's weights.
        model = model_class.from_pretrained(adapter_base, config=AutoConfig.from_pretrained(name))
        model.load_adapter(name)
        model.generation_config = GenerationConfig.from_pretrained(name)
        model.name_or_path = name  # what was loaded: files saved with it (guard, operating points) are found there
    prepare_model(model, processor, attn_implementation, name=name)
    if family == "blip":
        apply_saved_answer_generation(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(torch.device(device)).eval()
    return model, processor
