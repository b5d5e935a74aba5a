"""LoRA through peft (models/lora.py) on the tiny BLIP, BLIP-2 (OPT, T5) and InstructBLIP models."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    BertConfig,
    BertModel,
    Blip2ForConditionalGeneration,
    BlipForQuestionAnswering,
    InstructBlipForConditionalGeneration,
)

from retina_vqa.models.attention import set_attention_implementation
from retina_vqa.models.blip import (
    SharedImageBlipForQuestionAnswering,
    freeze,
    generate_answers,
)
from retina_vqa.models.blip2 import init_query_tokens
from retina_vqa.models.lora import (
    DEFAULT_TARGETS,
    apply_lora,
    base_model,
    check_activation_checkpointing,
    load_adapter,
    merge_lora,
    parameter_counts,
    save_adapter,
)
from retina_vqa.models.tiny_blip2 import INSTRUCTBLIP_DIR, OPT_DIR, T5_DIR

from ..helpers import ROOT, TINY_CONFIG, blip_batch, blip_logits, make_tiny_model
from ..same_answers import StepRecorder, agreeing_steps

CONFIGS = ROOT / "configs"
BLIP = "blip-tiny"

# What the defaults must wrap, and nothing else. blip-tiny: 4 ViT layers, 2 question-encoder and 2 answer-decoder
# layers, each with self- and cross-attention. The tiny Q-Formers: 2 layers, cross-attention in layer 0 only
# (cross_attention_frequency 2). OPT: 2 decoder layers. T5: 2 encoder blocks (self-attention), 2 decoder blocks
# (self- and encoder-decoder attention).
_QFORMER = [
    "qformer.encoder.layer.0.attention.attention.query",
    "qformer.encoder.layer.0.attention.attention.value",
    "qformer.encoder.layer.0.crossattention.attention.query",
    "qformer.encoder.layer.0.crossattention.attention.value",
    "qformer.encoder.layer.1.attention.attention.query",
    "qformer.encoder.layer.1.attention.attention.value",
]
_OPT = [f"language_model.model.decoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
EXPECTED_TARGETS = {
    BLIP: [f"vision_model.encoder.layers.{i}.self_attn.qkv" for i in range(4)]
    + [
        f"text_{part}.encoder.layer.{i}.{attention}.self.{p}"
        for part in ("encoder", "decoder.bert")
        for i in range(2)
        for attention in ("attention", "crossattention")
        for p in ("query", "value")
    ],
    OPT_DIR: _QFORMER + _OPT,
    T5_DIR: _QFORMER
    + [f"language_model.encoder.block.{i}.layer.0.SelfAttention.{p}" for i in range(2) for p in ("q", "v")]
    + [
        f"language_model.decoder.block.{i}.layer.{j}.{attention}.{p}"
        for i in range(2)
        for j, attention in ((0, "SelfAttention"), (1, "EncDecAttention"))
        for p in ("q", "v")
    ],
    INSTRUCTBLIP_DIR: _QFORMER + _OPT,
}
HEADS = {BLIP: "text_decoder.cls.predictions.", OPT_DIR: "language_model.lm_head", T5_DIR: "language_model.lm_head"}


def tiny_blip(seed: int = 0) -> BlipForQuestionAnswering:
    """The tiny BLIP as load_model hands it over (fused attention with the mask fix, the recipe's class swapped in),
    with the config's own init ranges: conftest's wide-init model is so sensitive that fp32 rounding (merged
    W + BA versus W x + B A x) grows to 0.1 in its logits."""
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(AutoConfig.from_pretrained(TINY_CONFIG)).eval()
    set_attention_implementation(model, "sdpa")
    model.__class__ = SharedImageBlipForQuestionAnswering
    return model


def tiny_blip2(folder: str, seed: int = 0):
    config = AutoConfig.from_pretrained(CONFIGS / folder)
    model_class = (
        InstructBlipForConditionalGeneration if config.model_type == "instructblip" else Blip2ForConditionalGeneration
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    init_query_tokens(model)
    return model


def build(folder: str):
    return tiny_blip() if folder == BLIP else tiny_blip2(folder)


def randomize_adapters(model, seed: int = 1) -> None:
    """LoRA starts as the identity (B = 0): give the adapters weights that change the outputs (by about the logits'
    own spread)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def blip2_inputs(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Image placeholders then text, as the processor lays them out; labels fitting the language model."""
    generator = torch.Generator().manual_seed(seed)
    n = config.num_query_tokens
    input_ids = torch.randint(6, 280, (2, n + 6), generator=generator)
    input_ids[:, :n] = config.image_token_index
    inputs = {
        "pixel_values": torch.randn(2, 3, 128, 128, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
    }
    if config.model_type == "instructblip":
        inputs["qformer_input_ids"] = torch.randint(6, 280, (2, 5), generator=generator)
        inputs["qformer_attention_mask"] = torch.ones(2, 5, dtype=torch.long)
    if config.use_decoder_only_language_model:
        labels = input_ids.clone()
        labels[:, :n] = -100
    else:
        labels = torch.randint(6, 280, (2, 3), generator=generator)
    inputs["labels"] = labels
    return inputs


@pytest.mark.parametrize("folder", list(EXPECTED_TARGETS))
def test_default_targets_wrap_exactly_the_intended_layers(folder):
    model = build(folder)
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    total = parameter_counts(model)["total_parameters"]
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)

    wrapped = sorted(peft_model.base_model.targeted_module_names)
    assert wrapped == sorted(EXPECTED_TARGETS[folder])
    # Every other linear layer is untouched, the vocabulary head included.
    lora_layers = {name for name, module in model.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer)}
    assert lora_layers == set(wrapped)
    untouched = {
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and "lora_" not in name and not name.endswith(".base_layer")
    }
    assert untouched == linear - set(wrapped)
    head = HEADS.get(folder, "language_model.lm_head")
    assert any(name.startswith(head) for name in untouched)

    # Trainable: exactly the adapters, r x (in + out) for each wrapped layer; everything else frozen.
    layers = dict(model.named_modules())
    expected = sum(4 * (layers[n].in_features + layers[n].out_features) for n in wrapped)
    counts = parameter_counts(peft_model)
    assert counts == {"trainable_parameters": expected, "total_parameters": total + expected}
    assert counts["trainable_parameters"] < 0.1 * counts["total_parameters"]
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)


def test_default_targets_are_one_regex_per_family():
    assert set(DEFAULT_TARGETS) == {"blip", "blip-2", "instructblip"}
    assert all(isinstance(targets, str) for targets in DEFAULT_TARGETS.values())


def test_all_linear_never_wraps_the_vocabulary_head():
    """peft's "all-linear" would wrap BLIP's head (get_output_embeddings() is None); named explicitly, it is refused."""
    model = tiny_blip()
    peft_model = apply_lora(model, r=2, alpha=4, dropout=0.0, target_modules="all-linear")
    wrapped = peft_model.base_model.targeted_module_names
    assert "vision_model.encoder.layers.0.mlp.fc1" in wrapped and "text_encoder.encoder.layer.0.output.dense" in wrapped
    assert not any(name.startswith("text_decoder.cls.") for name in wrapped)
    assert type(model.text_decoder.cls.predictions.decoder) is nn.Linear
    assert type(model.text_decoder.cls.predictions.transform.dense) is nn.Linear
    with pytest.raises(ValueError, match=r"--lora_target_modules .*vocabulary head .*predictions\.decoder"):
        apply_lora(tiny_blip(), r=2, alpha=4, dropout=0.0, target_modules=["query", "decoder"])


def test_the_recipe_runs_on_the_wrapped_blip():
    """SharedImageBlipForQuestionAnswering's forward (image_index, num_items_in_batch), the plain forward of a
    loss-only evaluation, and models.blip's functions, all given the PeftModel itself."""
    model = tiny_blip()
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.1)
    assert base_model(peft_model) is model and base_model(model) is model
    # Attribute reads reach the transformers model.
    assert peft_model.vision_model is model.vision_model and peft_model.text_decoder is model.text_decoder
    assert peft_model.config is model.config

    batch = blip_batch()
    peft_model.train()
    loss = peft_model(**batch, num_items_in_batch=torch.tensor(9)).loss
    loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # B starts at zero, so at the first step only B gets a gradient; it must reach every adapter.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    assert all(p.grad is None for p in peft_model.parameters() if not p.requires_grad)

    peft_model.eval()
    plain = {k: v for k, v in batch.items() if k != "image_index"}
    plain["pixel_values"] = batch["pixel_values"].index_select(0, batch["image_index"])
    with torch.no_grad():
        assert torch.isfinite(peft_model(**plain).loss)
    question = (batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    answers = generate_answers(peft_model, *question, image_index=batch["image_index"], max_new_tokens=4)
    assert answers.shape[0] == 3 and (answers[:, 0] == model.decoder_start_token_id).all()


def test_peft_task_type_question_ans_breaks_blip():
    """Why apply_lora leaves task_type unset. If this starts passing, peft or transformers changed."""
    model = make_tiny_model()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query"], task_type="QUESTION_ANS"))
    batch = blip_batch()
    with pytest.raises(TypeError, match="multiple values for keyword argument 'inputs_embeds'"):
        wrapped(pixel_values=batch["pixel_values"][:1], input_ids=batch["input_ids"][:1], labels=batch["labels"][:1])


def test_merged_blip_saves_as_plain_transformers_and_answers_the_same(tmp_path):
    model = tiny_blip()
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    randomize_adapters(peft_model)
    batch = blip_batch()
    with torch.no_grad():
        logits = blip_logits(peft_model, batch)
        with peft_model.disable_adapter():
            assert not torch.allclose(blip_logits(peft_model, batch), logits, atol=1e-3)
    args = (batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    adapter = StepRecorder()
    answers = generate_answers(peft_model, *args, image_index=batch["image_index"], max_new_tokens=5, **adapter.kwargs)

    merged = merge_lora(peft_model)
    assert merged is model and not any("lora_" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path)
    assert not any(tmp_path.glob("adapter_*"))
    loaded = BlipForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert type(loaded) is BlipForQuestionAnswering and loaded.config.architectures == ["BlipForQuestionAnswering"]
    set_attention_implementation(loaded, "sdpa")  # as prepare_model does on every load
    with torch.no_grad():
        torch.testing.assert_close(blip_logits(loaded, batch), logits, atol=1e-5, rtol=0)
    # Generated step by step as with the adapter: merging moves this model's logits by ~1e-6 of their scale (the
    # adapter itself by ~20-70%); its answers may part only where two tokens are that close.
    reloaded = StepRecorder()
    again = generate_answers(loaded, *args, image_index=batch["image_index"], max_new_tokens=5, **reloaded.kwargs)
    compared = [
        agreeing_steps(adapter.steps(i, answers=answers[:, 1:]), reloaded.steps(i, answers=again[:, 1:]), 1e-3)
        for i in range(len(answers))
    ]
    assert sum(compared) > len(answers), compared  # beyond the first step


@pytest.mark.parametrize("folder", [OPT_DIR, T5_DIR, INSTRUCTBLIP_DIR])
def test_merged_blip2_saves_as_plain_transformers_and_gives_the_same_logits(folder, tmp_path):
    model = tiny_blip2(folder)
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    randomize_adapters(peft_model)
    inputs = blip2_inputs(model.config)
    with torch.no_grad():
        output = peft_model(**inputs)
        with peft_model.disable_adapter():
            assert not torch.allclose(peft_model(**inputs).logits, output.logits, atol=1e-3)
    merge_lora(peft_model).save_pretrained(tmp_path)
    plain_class = type(model)  # Blip2ForConditionalGeneration or InstructBlipForConditionalGeneration
    loaded = plain_class.from_pretrained(tmp_path).eval()
    assert loaded.config.architectures == [plain_class.__name__]
    with torch.no_grad():
        reloaded = loaded(**inputs)
    torch.testing.assert_close(reloaded.logits, output.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(reloaded.loss, output.loss, atol=1e-5, rtol=0)


def test_saved_adapter_loads_back(tmp_path):
    peft_model = apply_lora(tiny_blip(), r=4, alpha=8, dropout=0.0)
    randomize_adapters(peft_model)
    save_adapter(peft_model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    loaded = load_adapter(tiny_blip(), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    batch = blip_batch()
    with torch.no_grad():
        torch.testing.assert_close(blip_logits(loaded, batch), blip_logits(peft_model, batch), atol=0, rtol=0)
    assert parameter_counts(load_adapter(tiny_blip(), tmp_path, is_trainable=True))["trainable_parameters"] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "--lora_r 0: the LoRA rank must be a positive integer"),
        ({"r": -4}, "--lora_r -4"),
        ({"alpha": 0}, "--lora_alpha 0: .* must be positive"),
        ({"alpha": -1.0}, "--lora_alpha -1.0"),
        ({"dropout": -0.1}, r"--lora_dropout -0.1: .* in \[0, 1\)"),
        ({"dropout": 1.0}, "--lora_dropout 1.0"),
        ({"target_modules": ["q_proj"]}, r"--lora_target_modules \['q_proj'\] matches no module .*qkv.*query"),
        ({"target_modules": r"text_encoder\..*\.q"}, r"matches no module of this blip model.*e\.g\. vision_model\."),
    ],
)
def test_bad_flags_say_which_and_how_to_fix(kwargs, message):
    settings = {"r": 4, "alpha": 8, "dropout": 0.0, **kwargs}
    model = tiny_blip()
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **settings)
    assert not any("lora_" in n for n, _ in model.named_parameters())  # refused before anything was wrapped


def test_a_family_without_defaults_needs_targets():
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(ValueError, match=r"No default LoRA targets for model type 'bert'.*--lora_target_modules"):
        apply_lora(BertModel(config), r=2, alpha=4, dropout=0.0)
    assert apply_lora(BertModel(config), r=2, alpha=4, dropout=0.0, target_modules=["query"]) is not None


def test_trainer_resumes_an_adapter_checkpoint_exactly(tmp_path):
    """2 of 4 steps saved by the project's VqaTrainer, resumed into a fresh wrap: the same adapters as 4 steps in one
    go (optimizer, scheduler, data order and LoRA-dropout RNG restored with them)."""
    from retina_vqa.arguments import VqaTrainingArguments
    from retina_vqa.training.checkpoints import is_complete, last_complete_checkpoint
    from retina_vqa.training.trainer import VqaTrainer

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(8):
        answer = torch.randint(6, 280, (4,), generator=generator)
        answer[0] = 5
        rows.append(
            {
                "pixel_values": torch.randn(3, 128, 128, generator=generator),
                "input_ids": torch.randint(6, 280, (6,), generator=generator),
                "attention_mask": torch.ones(6, dtype=torch.long),
                "decoder_input_ids": answer,
                "labels": answer,
            }
        )

    def train(output_dir, lora_seed, resume=None):
        torch.manual_seed(lora_seed)  # the adapters' initial A
        peft_model = apply_lora(tiny_blip(), r=4, alpha=8, dropout=0.1)
        args = VqaTrainingArguments(
            output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
            save_strategy="steps", save_steps=2, logging_steps=1, report_to="none", use_cpu=True,
            group_by_image=False, dataloader_num_workers=0, disable_tqdm=True, seed=0,
        )  # fmt: skip
        trainer = VqaTrainer(model=peft_model, args=args, train_dataset=rows)
        trainer.train(resume_from_checkpoint=resume)
        losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
        return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}, losses

    uninterrupted, losses = train(tmp_path / "a", lora_seed=0)
    assert list(losses) == [1, 2, 3, 4]
    checkpoint = tmp_path / "a" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "trainer_state.json"} <= files
    assert "model.safetensors" not in files  # the adapters only: a resume rebuilds the same base model
    assert is_complete(str(checkpoint)) and last_complete_checkpoint(str(tmp_path / "a")).endswith("checkpoint-4")

    at_step_2 = load_adapter(tiny_blip(), checkpoint)
    at_step_2 = {n: p for n, p in at_step_2.named_parameters() if "lora_" in n}
    assert at_step_2.keys() == uninterrupted.keys() and len(at_step_2) == 2 * len(EXPECTED_TARGETS[BLIP])
    assert not all(torch.equal(at_step_2[n], w) for n, w in uninterrupted.items())  # steps 3-4 changed them

    resumed, resumed_losses = train(tmp_path / "b", lora_seed=1, resume=str(checkpoint))
    # Steps 1-2 come from the checkpoint's trainer state, 3-4 were trained again.
    assert resumed_losses == pytest.approx(losses, abs=1e-6)
    assert resumed.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weight, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(("folder", "use_reentrant"), [(folder, False) for folder in EXPECTED_TARGETS] + [(BLIP, True)])
def test_activation_checkpointing_under_lora_gives_the_same_gradients(folder, use_reentrant):
    """As the Trainer enables it (`--gradient_checkpointing`): BLIP's in-place position-embedding add used to fail
    on the frozen embeddings' hooked output; the adapters' gradients must equal those without checkpointing."""

    def adapter_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = build(folder)
        peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
        randomize_adapters(peft_model)
        if checkpointing:
            peft_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
        peft_model.train()
        if folder == BLIP:
            loss = peft_model(**blip_batch(), num_items_in_batch=torch.tensor(9)).loss
        else:
            loss = peft_model(**blip2_inputs(model.config)).loss
        loss.backward()
        return {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_grads(False), adapter_grads(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        assert checkpointed[name] is not None, name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_reentrant_checkpointing_that_would_starve_the_qformer_adapters_is_refused():
    """Reentrant checkpointing gives the BLIP-2 Q-Former's adapters no gradient (frozen inputs): refused up front."""
    model = tiny_blip2(OPT_DIR)
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    randomize_adapters(peft_model)
    peft_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    peft_model.train()
    with pytest.raises(RuntimeError, match="does not require grad"):
        peft_model(**blip2_inputs(model.config)).loss.backward()
    with pytest.raises(ValueError, match="use_reentrant"):
        check_activation_checkpointing("blip-2", 16, True, {"use_reentrant": True})
    check_activation_checkpointing("blip-2", 16, True, None)  # the default: non-reentrant
    check_activation_checkpointing("blip", 16, True, {"use_reentrant": True})  # BLIP: the hook above handles it
    check_activation_checkpointing("instructblip", 0, True, {"use_reentrant": True})  # full fine-tuning


def test_a_frozen_image_encoder_gets_no_adapter_and_explicit_targets_inside_it_are_refused():
    """--freeze_vision_encoder with BLIP's default targets: adapters in the question encoder and answer decoder only,
    so the image encoder's outputs stay those of the loaded model."""
    model = tiny_blip()
    freeze(model, vision_model=True)
    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0, frozen_image_encoder=True)
    wrapped = peft_model.base_model.targeted_module_names
    assert wrapped and not any(name.startswith("vision_model.") for name in wrapped)
    assert set(wrapped) == {n for n in EXPECTED_TARGETS[BLIP] if not n.startswith("vision_model.")}
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if ".vision_model." in f".{n}")
    for targets in (["qkv", "query"], "all-linear"):
        with pytest.raises(ValueError, match="--freeze_vision_encoder"):
            apply_lora(tiny_blip(), r=4, alpha=8, dropout=0.0, target_modules=targets, frozen_image_encoder=True)
