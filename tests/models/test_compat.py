"""The guard around transformers internals, and the canaries: upstream BLIP bugs the recipe works around.

A canary passes while upstream is still broken in the way the recipe assumes. When one fails after a
transformers upgrade, upstream fixed (or changed) that behaviour: its docstring says which workaround to
re-check and what to delete.
"""

from __future__ import annotations

import ast
import inspect
import warnings
from pathlib import Path

import pytest
import torch
from transformers import BlipConfig, BlipForQuestionAnswering, Seq2SeqTrainer

from retina_vqa.models import compat
from retina_vqa.models.attention import MaskedBlipTextSelfAttention
from retina_vqa.training.trainer import VqaTrainer

from ..helpers import make_tiny_model

SRC = Path(__file__).resolve().parents[2] / "src" / "retina_vqa"


def test_the_installed_transformers_is_in_the_tested_range():
    assert compat.check_transformers_version() is None


def test_versions_outside_the_range_warn_with_the_fix_and_4_x_fails():
    with pytest.warns(RuntimeWarning, match=r"outside the range .*pip install 'transformers>=5\.24\.0,<5\.26\.0'"):
        message = compat.check_transformers_version("5.31.0")
    assert "tests/models/test_compat.py" in message
    with pytest.raises(ImportError, match="transformers 5"):
        compat.check_transformers_version("4.46.3")


def test_every_trainer_hook_vqa_trainer_overrides_is_known_and_exists_upstream():
    """Renaming an override (here or upstream) would silently switch a fix off: both ends are checked."""
    compat.check_trainer_hooks()
    for name in compat.TRAINER_HOOKS:
        assert name in VqaTrainer.__dict__, f"VqaTrainer no longer overrides {name}"
        assert callable(getattr(Seq2SeqTrainer, name)), name
    private_overrides = {n for n in VqaTrainer.__dict__ if n.startswith("_") and not n.startswith("__")}
    assert private_overrides <= set(compat.TRAINER_HOOKS), private_overrides - set(compat.TRAINER_HOOKS)


def test_a_missing_trainer_hook_fails_loudly():
    class Renamed(Seq2SeqTrainer):
        _get_train_sampler = None

    with pytest.raises(RuntimeError, match="_get_train_sampler"):
        compat.check_trainer_hooks(Renamed)


def test_private_transformers_names_are_imported_only_in_compat():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "compat.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            # transformers.utils (logging, progress bars) is public API; model and integration modules are not.
            if module.startswith("transformers.") and not module.startswith("transformers.utils"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in ("_from_model_config", "_attn_implementation"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------------------- canaries


def test_canary_upstream_cross_attention_ignores_its_mask():
    """transformers' BlipTextAttention passes the cross-attention mask as ``attention_mask``, which its inner
    self-attention ignores for cross-attention: the answer decoder attends to question padding.

    When this fails, upstream passes the mask: delete `MaskedBlipTextSelfAttention` and
    `apply_cross_attention_mask_fix` (models/attention.py; the SDPA class keeps its own mask handling)."""
    model = make_tiny_model()
    torch.manual_seed(0)
    question = torch.randn(1, 5, model.config.text_config.hidden_size)
    padded = torch.cat([question, torch.randn(1, 3, question.shape[-1]) * 10], dim=1)
    start = torch.tensor([[model.decoder_start_token_id]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    short = model.text_decoder(
        input_ids=start, encoder_hidden_states=question, encoder_attention_mask=torch.ones(1, 5, dtype=torch.long)
    ).logits
    for module in model.modules():
        if isinstance(module, MaskedBlipTextSelfAttention):
            module.__class__ = compat.BlipTextSelfAttention  # as transformers builds it
    leaked = model.text_decoder(input_ids=start, encoder_hidden_states=padded, encoder_attention_mask=mask).logits
    assert (leaked - short).abs().max() > 1e-3


def test_canary_upstream_generate_ignores_question_padding(tiny_processor):
    """`BlipForQuestionAnswering.generate` hands the decoder an all-ones question mask: in a padded batch,
    short questions answer differently than alone.

    When this fails, upstream masks the padding: `models.blip.generate_answers` may call ``model.generate``
    (keep image sharing and kept image-encoder outputs, which upstream does not have)."""
    model = make_tiny_model()
    questions = ["is there any abnormality?", "what might be the cause of this condition in the left eye?"]
    batch = tiny_processor.tokenizer(questions, padding=True, return_tensors="pt")
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 128, 128)
    stock = model.generate(input_ids=batch.input_ids, pixel_values=pixels, attention_mask=batch.attention_mask)
    alone = tiny_processor.tokenizer(questions[:1], return_tensors="pt")
    single = model.generate(input_ids=alone.input_ids, pixel_values=pixels[:1], attention_mask=alone.attention_mask)
    pad = model.config.text_config.pad_token_id
    assert [t for t in stock[0].tolist() if t != pad] != [t for t in single[0].tolist() if t != pad]


def test_canary_upstream_vision_init_range_is_near_zero():
    """`BlipVisionConfig` defaults to ``initializer_range=1e-10``, meant for loading pretrained weights: from
    scratch it builds an image encoder of ~0 weights that never learns to see.

    When this fails, upstream changed the default: the guard in `models.loading.load_model` may go."""
    assert BlipConfig().vision_config.initializer_range < 1e-4


def test_canary_upstream_blip_loss_is_a_batch_mean_the_trainer_rescales():
    """BLIP VQA does not accept the Trainer's ``num_items_in_batch``: the Trainer then multiplies its per-batch
    mean loss by the number of processes (DDP trains on N times the loss).

    When this fails, upstream normalises by ``num_items_in_batch`` itself: re-check
    `SharedImageBlipForQuestionAnswering.accepts_loss_kwargs` and its loss."""
    assert not getattr(BlipForQuestionAnswering, "accepts_loss_kwargs", False)
    assert "num_items_in_batch" not in inspect.signature(BlipForQuestionAnswering.forward).parameters


def test_canary_from_pretrained_leaves_the_text_decoder_at_20_tokens(tmp_path):
    """``from_pretrained`` builds the text decoder's generation config from the text config, never from
    generation_config.json: a bare ``generate`` stops after 20 tokens whatever was saved.

    When this fails, upstream restores it: `models.generation_config.apply_saved_answer_generation` and the
    explicit ``max_length`` in the model card's snippet may go."""
    from retina_vqa.models.generation_config import configure_answer_generation

    model = make_tiny_model()
    configure_answer_generation(model, max_answer_length=40)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = BlipForQuestionAnswering.from_pretrained(tmp_path)
    assert loaded.generation_config.max_length == 40
    assert loaded.text_decoder.generation_config.max_length != 40
