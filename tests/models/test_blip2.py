"""BLIP-2 (OPT, T5) and InstructBLIP inputs: the image placeholders, the targets, and answers that do not depend
on the batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from retina_vqa.data.collator import PromptCollator
from retina_vqa.models.blip2 import (
    DEFAULT_PROMPT_TEMPLATE,
    PromptLayout,
    generate_prompt_answers,
    init_query_tokens,
    model_family,
    prompt_only,
)
from retina_vqa.models.family import tokenize_prompts_and_answers

from ..helpers import ROOT
from ..same_answers import StepRecorder, agreeing_steps
from .test_generation import QUESTIONS

FAMILIES = {"opt": "blip2-opt-tiny", "t5": "blip2-t5-tiny", "instructblip": "instructblip-tiny"}
ANSWERS = ["yes", "diabetic retinopathy, a complication of diabetes", "left eye"]


def build(name: str, seed: int = 0):
    folder = ROOT / "configs" / FAMILIES[name]
    processor = AutoProcessor.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    # Wider than the shipped init, so that an untrained model's answers differ from question to question.
    config.text_config.initializer_range = 0.3
    config.text_config.initializer_factor = 3.0  # T5's own knob
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    init_query_tokens(model)
    return model, processor, PromptLayout.from_model(model.config, processor)


def rows(processor, layout, answers=True):
    tokenised = tokenize_prompts_and_answers(
        {"question": QUESTIONS, "answer": ANSWERS},
        processor,
        layout,
        "question",
        "answer" if answers else None,
        DEFAULT_PROMPT_TEMPLATE,
        max_question_length=64,
        max_answer_length=48,
    )
    torch.manual_seed(1)
    images = [torch.rand(128, 128, 3).mul(255).byte().numpy() for _ in QUESTIONS]
    return [{**{k: v[i] for k, v in tokenised.items()}, "image": images[i]} for i in range(len(QUESTIONS))]


def collator(processor, layout):
    return PromptCollator.from_layout(layout, processor.image_processor)


def test_families_are_read_from_the_config():
    assert [model_family(AutoConfig.from_pretrained(ROOT / "configs" / f)) for f in FAMILIES.values()] == [
        "blip-2",
        "blip-2",
        "instructblip",
    ]
    assert model_family(AutoConfig.from_pretrained(ROOT / "configs" / "blip-tiny")) == "blip"
    with pytest.raises(ValueError, match="Salesforce/blip2-opt-2.7b"):
        model_family(type("Config", (), {"model_type": "llava"})())


def test_decoder_only_targets_label_the_answer_and_eos_only():
    _, processor, layout = build("opt")
    features = rows(processor, layout)
    batch = collator(processor, layout)(features)
    for i, feature in enumerate(features):
        prompt, answer = feature["input_ids"], feature["answer_ids"]
        assert prompt[: layout.num_query_tokens] == [layout.image_token_id] * layout.num_query_tokens
        assert prompt[layout.num_query_tokens] == processor.tokenizer.bos_token_id  # BOS after the image tokens
        assert answer[-1] == processor.tokenizer.eos_token_id
        n = len(prompt) + len(answer)
        assert batch["input_ids"][i, :n].tolist() == prompt + answer
        assert batch["labels"][i, :n].tolist() == [-100] * len(prompt) + answer
        assert batch["labels"][i, n:].eq(-100).all() and batch["attention_mask"][i, n:].eq(0).all()
    assert processor.tokenizer.decode(features[1]["answer_ids"], skip_special_tokens=True) == ANSWERS[1]


def test_a_row_without_its_image_tokens_is_refused():
    _, processor, layout = build("opt")
    features = rows(processor, layout)
    features[2]["input_ids"] = processor.tokenizer("Question: which eye is this? Answer:")["input_ids"]
    with pytest.raises(ValueError, match=r"Batch row 2 holds 0 <image> tokens, the model reads 4"):
        collator(processor, layout)(features)


@pytest.mark.parametrize("name", FAMILIES)
def test_loss_sees_the_image(name):
    model, processor, layout = build(name)
    batch = collator(processor, layout)(rows(processor, layout))
    loss = model(**batch).loss
    other = model(**{**batch, "pixel_values": batch["pixel_values"].flip(0)}).loss
    assert torch.isfinite(loss) and abs(loss.item() - other.item()) > 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_answers_equal_one_at_a_time_answers(name):
    """A padded batch (and a training batch, the prompt cut out of prompt + answer) decodes each question as it is
    decoded alone: the same scores at every step up to float rounding, compared relative to their scale
    (`tests.same_answers`), so the same tokens unless two were near-tied."""
    model, processor, layout = build(name)
    make = collator(processor, layout)
    features = rows(processor, layout, answers=False)
    # An untrained T5 puts its mass on the pad token (its decoder start); trained, it never emits it.
    settings = {"max_new_tokens": 6, "num_beams": 1, "suppress_tokens": [layout.pad_token_id]}

    def answer(batch: dict) -> tuple[torch.Tensor, StepRecorder]:
        recorder = StepRecorder()
        return generate_prompt_answers(model, layout, **batch, **settings, **recorder.kwargs), recorder

    alone = [answer(make([f])) for f in features]
    decode = processor.tokenizer.batch_decode
    assert len(set(decode([a[0] for a, _ in alone], skip_special_tokens=True))) > 1  # the questions differ
    # As a batch, and from a training batch as evaluation generates.
    for batch in (make(features), make(rows(processor, layout))):
        answers, batched = answer(batch)
        compared = [  # ~1e-6 of the scale apart here: these models amplify rounding far less than BLIP's
            agreeing_steps(recorder.steps(answers=own), batched.steps(i, answers=answers), tolerance=1e-3)
            for i, (own, recorder) in enumerate(alone)
        ]
        assert sum(compared) > len(features), compared  # beyond the first step


def test_prompt_only_left_pads_the_prompts():
    ids = torch.tensor([[9, 9, 2, 40, 50, 3, 0], [9, 9, 2, 41, 42, 51, 3]])
    mask = (ids != 0).long()
    labels = torch.tensor([[-100, -100, -100, -100, 50, 3, -100], [-100, -100, -100, -100, -100, 51, 3]])
    prompts, prompt_mask = prompt_only(ids, mask, labels, pad_token_id=0)
    assert prompts.tolist() == [[0, 9, 9, 2, 40], [9, 9, 2, 41, 42]]
    assert prompt_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]


def test_load_model_builds_blip2_from_a_config_with_live_query_tokens_and_refuses_blip_only_flags():
    from retina_vqa.arguments import ModelArguments
    from retina_vqa.training.model_setup import load_model, load_processor

    args = ModelArguments(model_name_or_path="", config_name=str(ROOT / "configs" / FAMILIES["opt"]))
    processor = load_processor(args)
    model = load_model(args, processor)
    assert type(model).__name__ == "Blip2ForConditionalGeneration"
    queries = model.query_tokens.detach()
    assert queries.std() > 0.01 and not torch.allclose(queries[0, 0], queries[0, 1])  # not transformers' zeros
    frozen = ModelArguments(
        model_name_or_path="", config_name=args.config_name, freeze_vision_encoder=True, freeze_language_model=True
    )
    model = load_model(frozen, processor)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"query_tokens", "qformer", "language_projection"}
    with pytest.raises(ValueError, match=r"--label_smoothing .*not available for blip-2"):
        load_model(ModelArguments(model_name_or_path="", config_name=args.config_name, label_smoothing=0.1), processor)


def test_a_blip2_built_around_a_pretrained_image_encoder_takes_its_weights_and_checks_its_pixels(tmp_path):
    """--vision_model_name_or_path (the BLIP-2 demo's frozen image encoder): architecture and weights come from the
    BLIP checkpoint, the Q-Former reads it at its width, the answer depends on it; bad combinations are refused."""
    from retina_vqa.arguments import ModelArguments
    from retina_vqa.training.model_setup import load_model, load_processor

    from ..helpers import TINY_CONFIG, make_tiny_model

    blip = make_tiny_model(init_range=0.1, seed=3)
    blip.save_pretrained(tmp_path / "blip")
    AutoProcessor.from_pretrained(TINY_CONFIG).save_pretrained(tmp_path / "blip")
    config_name = str(ROOT / "configs" / FAMILIES["opt"])
    args = ModelArguments(
        model_name_or_path="",
        config_name=config_name,
        vision_model_name_or_path=str(tmp_path / "blip"),
        freeze_vision_encoder=True,
    )
    processor = load_processor(args)
    model = load_model(args, processor)
    theirs, ours = blip.vision_model.state_dict(), model.vision_model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert model.config.vision_config.hidden_size == blip.config.vision_config.hidden_size != 64  # the tiny BLIP-2's
    assert model.config.qformer_config.encoder_hidden_size == blip.config.vision_config.hidden_size
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    model.eval()
    batch = collator(processor, PromptLayout.from_model(model.config, processor))(
        rows(processor, PromptLayout.from_model(model.config, processor))
    )
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    assert abs(loss.item() - model(**{**batch, "pixel_values": batch["pixel_values"].flip(0)}).loss.item()) > 1e-5

    with pytest.raises(ValueError, match="needs --config_name"):
        ModelArguments(model_name_or_path=str(tmp_path / "blip"), vision_model_name_or_path=str(tmp_path / "blip"))
    with pytest.raises(ValueError, match="BLIP VQA config"):
        load_model(
            ModelArguments(
                model_name_or_path="", config_name=str(TINY_CONFIG), vision_model_name_or_path=str(tmp_path)
            ),
            AutoProcessor.from_pretrained(TINY_CONFIG),
        )
    with pytest.raises(OSError, match="vision_model_name_or_path"):
        load_model(
            ModelArguments(
                model_name_or_path="", config_name=config_name, vision_model_name_or_path=str(tmp_path / "x")
            ),
            processor,
        )
    other = AutoProcessor.from_pretrained(TINY_CONFIG)
    other.image_processor.image_mean = [0.5, 0.5, 0.5]
    other.save_pretrained(tmp_path / "blip")
    with pytest.raises(ValueError, match="image_mean"):
        load_model(args, processor)
