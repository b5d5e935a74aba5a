"""The answer-generation settings saved with a model, written and read back in one place.

BLIP's ``generate`` uses its text decoder's generation config, which ``from_pretrained`` builds from the
text config and never from ``generation_config.json``; these functions keep the two in step.
"""

from __future__ import annotations

from typing import Any

from transformers import BlipForQuestionAnswering, GenerationConfig

from .blip2 import model_family
from .compat import mark_generation_config_deliberate
from .family import answer_token_budget

DEFAULT_MAX_ANSWER_LENGTH = 48


def configure_answer_generation(
    model: Any, max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH, num_beams: int = 1
) -> None:
    """Store how answers are generated on the model, so that the saved model carries it.

    Sets, on ``model.generation_config`` (written as ``generation_config.json`` by ``save_pretrained`` and
    ``Trainer.save_model``) and on ``model.text_decoder.generation_config`` (the one BLIP's ``generate``
    actually uses, in this process): the start token ``[DEC]`` (bos), the end token ``[SEP]`` (eos), the pad
    token, ``max_length = max_answer_length`` and ``num_beams``. ``max_length`` counts the ``[DEC]`` start,
    exactly like the Trainer's ``generation_max_length`` during evaluation, so an answer has at most
    ``max_answer_length - 1`` generated tokens.

    In transformers 5.x a model loaded with ``from_pretrained`` builds its text decoder's generation config
    from the text config, never from ``generation_config.json``, and generation parameters in ``config.json``
    are dropped on load: a bare ``model.generate(**inputs)`` therefore stops after 20 tokens whatever is
    saved. Plain-transformers users pass the saved length explicitly::

        model.generate(**inputs, max_length=model.generation_config.max_length)

    `retina_vqa.models.loading.load_for_inference` applies the saved settings itself.
    """
    if max_answer_length < 2:
        raise ValueError(f"max_answer_length must be at least 2 ([DEC], a token), got {max_answer_length}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}.")
    if model_family(model.config) != "blip":
        # BLIP-2 / InstructBLIP: the answer is what the language model adds, up to max_new_tokens (eos included).
        config = model.generation_config
        config.max_new_tokens, config.max_length, config.num_beams = max_answer_length, None, num_beams
        mark_generation_config_deliberate(config)
        return
    for config in (model.generation_config, model.text_decoder.generation_config):
        _write_answer_settings(config, model, max_answer_length, num_beams)


def answer_generation_defaults(model: BlipForQuestionAnswering) -> dict[str, int]:
    """``{"max_new_tokens": ..., "num_beams": ...}`` saved with the model, else 48 new tokens and greedy.

    Reads ``model.generation_config`` (loaded from ``generation_config.json``): ``max_new_tokens`` if set,
    else ``max_length - 1`` (the decoder starts from the single ``[DEC]`` token).
    """
    config = model.generation_config
    if config.max_new_tokens is not None:
        max_new_tokens = config.max_new_tokens
    elif config.max_length is not None:
        max_new_tokens = answer_token_budget("blip", max(2, config.max_length))
    else:
        max_new_tokens = DEFAULT_MAX_ANSWER_LENGTH
    return {"max_new_tokens": max_new_tokens, "num_beams": config.num_beams or 1}


def apply_saved_answer_generation(model: BlipForQuestionAnswering) -> None:
    """After ``from_pretrained``: give the text decoder the answer settings of ``model.generation_config``.

    Afterwards a bare ``model.generate(**inputs)`` uses the saved answer length and beams, with ``[SEP]`` as
    the end token, instead of transformers' 20-token default.
    """
    defaults = answer_generation_defaults(model)
    # As a max_length (counting [DEC]), so that a max_length or max_new_tokens passed to generate wins.
    _write_answer_settings(
        model.text_decoder.generation_config, model, defaults["max_new_tokens"] + 1, defaults["num_beams"]
    )


def _write_answer_settings(
    config: GenerationConfig, model: BlipForQuestionAnswering, max_length: int, num_beams: int
) -> None:
    """The one writer of answer settings: [DEC] start, [SEP] end, pad, length (counting [DEC]) and beams."""
    text_config = model.config.text_config
    config.bos_token_id = text_config.bos_token_id
    config.decoder_start_token_id = text_config.bos_token_id
    config.eos_token_id = text_config.sep_token_id
    config.pad_token_id = text_config.pad_token_id
    config.max_length = max_length
    config.max_new_tokens = None
    config.num_beams = num_beams
    # Deliberate settings, not ones derived from the model config (older versions regenerate those).
    mark_generation_config_deliberate(config)
