import pytest
import torch

from retina_vqa.models.attention import (
    MaskedBlipTextSelfAttention,
    _additive_mask,
    apply_cross_attention_mask_fix,
    attention_implementation,
    set_attention_implementation,
)

from ..helpers import TINY_CONFIG, make_tiny_model
from ..same_answers import StepRecorder, agreeing_steps


def test_patches_only_cross_attention_and_keeps_the_state_dict():
    model = make_tiny_model()  # already patched
    patched = [m for m in model.modules() if isinstance(m, MaskedBlipTextSelfAttention)]
    layers = model.config.text_config.num_hidden_layers
    assert len(patched) == 2 * layers  # question encoder + answer decoder
    assert apply_cross_attention_mask_fix(model) == 0  # idempotent
    fresh = make_tiny_model()
    assert model.state_dict().keys() == fresh.state_dict().keys()


def test_decoder_cross_attention_ignores_question_padding():
    model = make_tiny_model()
    torch.manual_seed(0)
    question = torch.randn(1, 5, model.config.text_config.hidden_size)
    padded = torch.cat([question, torch.randn(1, 3, question.shape[-1]) * 10], dim=1)
    start = torch.tensor([[model.decoder_start_token_id]])
    short = model.text_decoder(
        input_ids=start,
        encoder_hidden_states=question,
        encoder_attention_mask=torch.ones(1, 5, dtype=torch.long),
    ).logits
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    long = model.text_decoder(input_ids=start, encoder_hidden_states=padded, encoder_attention_mask=mask).logits
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- fused attention


def _padded_batch(model, seed: int = 0, batch: int = 4):
    """Questions and answers of different lengths (padding on both), two images shared by four questions."""
    generator = torch.Generator().manual_seed(seed)
    text = model.config.text_config
    size = model.config.vision_config.image_size
    question_lengths, answer_lengths = [9, 4, 7, 3][:batch], [2, 6, 3, 5][:batch]
    input_ids = torch.randint(5, text.vocab_size, (batch, max(question_lengths)), generator=generator)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(question_lengths):
        attention_mask[row, :length] = 1
    input_ids[attention_mask == 0] = text.pad_token_id
    answers = torch.randint(5, text.vocab_size, (batch, max(answer_lengths) + 1), generator=generator)
    answers[:, 0] = text.bos_token_id
    decoder_attention_mask = torch.zeros_like(answers)
    for row, length in enumerate(answer_lengths):
        decoder_attention_mask[row, : length + 1] = 1
    answers[decoder_attention_mask == 0] = text.pad_token_id
    labels = answers.masked_fill(decoder_attention_mask == 0, -100)
    labels[:, 0] = -100
    return {
        "pixel_values": torch.randn(2, 3, size, size, generator=generator),
        "image_index": torch.tensor([0, 0, 1, 1][:batch]),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": answers,
        "decoder_attention_mask": decoder_attention_mask,
        "labels": labels,
    }


def _recipe_model(implementation: str, **config_changes):
    """The recipe's training model (shared images, token-normalised loss) at the tiny config's own init."""
    from transformers import AutoConfig, BlipForQuestionAnswering

    from retina_vqa.models.blip import SharedImageBlipForQuestionAnswering

    config = AutoConfig.from_pretrained(TINY_CONFIG)
    for key, value in config_changes.items():
        setattr(config.text_config, key, value)
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(config)
    model.__class__ = SharedImageBlipForQuestionAnswering
    set_attention_implementation(model, implementation)
    return model


def _loss_logits_and_grads(model, batch):
    model.zero_grad()
    output = model(**batch, num_items_in_batch=int((batch["labels"] != -100).sum()))
    output.loss.backward()
    # The decoder's logits on the same inputs (the training forward returns only the loss).
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        image_embeds = image_embeds.index_select(0, batch["image_index"])
        from retina_vqa.models.blip import encode_questions

        question = encode_questions(model, image_embeds, batch["input_ids"], batch["attention_mask"])
        logits = model.text_decoder(
            input_ids=batch["decoder_input_ids"],
            attention_mask=batch["decoder_attention_mask"],
            encoder_hidden_states=question,
            encoder_attention_mask=batch["attention_mask"],
        ).logits
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.loss.detach(), logits, grads


def test_sdpa_matches_eager_logits_loss_and_every_gradient_in_fp32():
    eager, fused = _recipe_model("eager"), _recipe_model("sdpa")
    assert attention_implementation(eager) == "eager" and attention_implementation(fused) == "sdpa"
    batch = _padded_batch(eager)
    eager_loss, eager_logits, eager_grads = _loss_logits_and_grads(eager.train(), batch)
    fused_loss, fused_logits, fused_grads = _loss_logits_and_grads(fused.train(), batch)
    assert abs(eager_loss.item() - fused_loss.item()) < 1e-4
    real = batch["decoder_attention_mask"].bool()
    assert (eager_logits - fused_logits)[real].abs().max() < 1e-4
    assert eager_grads.keys() == fused_grads.keys()
    assert len(eager_grads) == len(list(eager.parameters()))  # every parameter, vision included
    worst = max((eager_grads[k] - fused_grads[k]).abs().max().item() for k in eager_grads)
    assert worst < 1e-4, worst
    # Not trivially equal: the gradients are far from zero.
    assert max(g.abs().max().item() for g in eager_grads.values()) > 1e-2


def test_sdpa_keeps_the_cross_attention_mask_fix():
    model = _recipe_model("sdpa").eval()
    torch.manual_seed(0)
    question = torch.randn(1, 5, model.config.text_config.hidden_size)
    padded = torch.cat([question, torch.randn(1, 3, question.shape[-1]) * 10], dim=1)
    start = torch.tensor([[model.decoder_start_token_id]])
    short = model.text_decoder(
        input_ids=start, encoder_hidden_states=question, encoder_attention_mask=torch.ones(1, 5, dtype=torch.long)
    ).logits
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    long = model.text_decoder(input_ids=start, encoder_hidden_states=padded, encoder_attention_mask=mask).logits
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_sdpa_generates_the_same_answers_as_eager_through_the_cache(num_beams):
    """Every decoding step's scores, compared relative to their scale (`tests.same_answers`): this wide model turns
    the two kernels' float32 rounding into ~1% of its logits, and may part where two tokens are that close. A cache
    or mask out of place in the fused path moves them by far more."""
    from retina_vqa.models.blip import generate_answers

    eager = make_tiny_model()  # wide init: long answers that depend on the input
    fused = make_tiny_model()
    set_attention_implementation(fused, "sdpa")
    batch = _padded_batch(eager)
    kwargs = {"max_length": 24, "num_beams": num_beams, "do_sample": False}
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "image_index")}
    recorders, answers = [], []
    for model in (eager, fused):
        recorders.append(StepRecorder())
        answers.append(generate_answers(model, **inputs, **kwargs, **recorders[-1].kwargs))
    assert answers[0].shape[1] > 5  # several cached decoding steps
    # Greedy search: the answers ([DEC] cut off) are the last step's choice; beam search: the running beams are.
    ends = [a[:, 1:] if num_beams == 1 else None for a in answers]
    compared = [
        agreeing_steps(*(r.steps(i, num_beams, end) for r, end in zip(recorders, ends, strict=True)))
        for i in range(len(answers[0]))
    ]
    assert max(compared) > 5, compared  # compared through several cached steps


def test_switching_back_and_forth_keeps_weights_and_state_dict():
    from transformers.models.blip.modeling_blip import BlipAttention
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vision_layers = model.config.vision_config.num_hidden_layers
    text_layers = model.config.text_config.num_hidden_layers
    # vision self-attention + (self + cross) in the question encoder and in the answer decoder
    expected = vision_layers + 4 * text_layers
    assert set_attention_implementation(model, "sdpa") == expected
    assert set_attention_implementation(model, "sdpa") == 0  # idempotent
    assert set_attention_implementation(model, "eager") == expected
    kinds = {type(m) for m in model.modules()}
    assert BlipAttention in kinds and BlipTextSelfAttention in kinds and MaskedBlipTextSelfAttention in kinds
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)


def test_unknown_implementation_names_the_choices():
    with pytest.raises(ValueError, match="flash.*sdpa, eager"):
        set_attention_implementation(make_tiny_model(), "flash")


def test_sdpa_under_bf16_autocast_stays_close_to_fp32():
    # Under autocast the query is bf16 while BLIP's additive mask is fp32: the mask is cast, not rejected.
    model = _recipe_model("sdpa").eval()
    batch = _padded_batch(model)
    with torch.no_grad():
        reference = model(**batch).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**batch).loss
    assert torch.isfinite(low) and abs(low.item() - reference.item()) < 0.05 * reference.item()


def test_fp16_mask_stays_finite():
    mask = torch.tensor([[[[0.0, torch.finfo(torch.float32).min]]]])
    cast = _additive_mask(mask, torch.zeros(1, dtype=torch.float16))
    assert cast.dtype == torch.float16 and torch.isfinite(cast).all() and cast[..., 1] < -6e4
