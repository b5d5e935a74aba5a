import pytest
import torch

from retina_vqa.models.attention import (
    MaskedBlipTextSelfAttention,
    _additive_mask,
    _shared_rows,
    apply_cross_attention_mask_fix,
    attention_implementation,
    cross_attention_shares_rows,
    set_attention_implementation,
)
from retina_vqa.models.blip import encode_images, encode_questions

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


# ------------------------------------------------------------------------------ keys and values once per image


def _cross_key_rows(model) -> list[int]:
    """Records the rows each question-encoder cross-attention key projection is called on."""
    seen: list[int] = []
    for name, module in model.text_encoder.named_modules():
        if name.endswith("crossattention.self"):
            module.key.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    return seen


def _questions_about_three_images(model):
    generator = torch.Generator().manual_seed(3)
    size = model.config.vision_config.image_size
    with torch.no_grad():
        images = encode_images(model, torch.randn(3, 3, size, size, generator=generator))
    index = torch.tensor([0, 0, 2, 1, 2, 2])  # image 2 asked three times, not in order
    input_ids = torch.randint(5, model.config.text_config.vocab_size, (6, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2:, 4:] = 0
    return images, index, input_ids, attention_mask


def _encoded_and_grads(model, images, index, input_ids, attention_mask, shared: bool):
    model.zero_grad()
    images = images.clone().requires_grad_(True)
    if shared:
        states = encode_questions(model, images, input_ids, attention_mask, index)
    else:
        states = encode_questions(model, images.index_select(0, index), input_ids, attention_mask)
    # A fixed random read-out of the real tokens (a sum of squares of layer-normed states would be ~constant).
    readout = torch.randn(states.shape, generator=torch.Generator().manual_seed(4))
    (states * readout * attention_mask[..., None]).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.text_encoder.named_parameters() if p.grad is not None}
    return states.detach(), images.grad, grads


def test_question_encoder_projects_each_image_once_with_the_same_states_and_gradients():
    model = _recipe_model("sdpa").train()
    images, index, input_ids, attention_mask = _questions_about_three_images(model)
    rows = _cross_key_rows(model)
    layers = model.config.text_config.num_hidden_layers
    once = _encoded_and_grads(model, images, index, input_ids, attention_mask, shared=True)
    assert rows == [3] * layers  # each image projected once, not once per question
    rows.clear()
    repeated = _encoded_and_grads(model, images, index, input_ids, attention_mask, shared=False)
    assert rows == [6] * layers
    torch.testing.assert_close(once[0], repeated[0], atol=1e-5, rtol=1e-5)
    # The images' gradients sum over their questions; image 1 (one question) and image 2 (three) alike.
    torch.testing.assert_close(once[1], repeated[1], atol=1e-5, rtol=1e-5)
    assert once[1].abs().amax(dim=(1, 2)).min() > 1e-3
    assert once[2].keys() == repeated[2].keys() and len(once[2]) == len(list(model.text_encoder.parameters()))
    for name in once[2]:
        torch.testing.assert_close(once[2][name], repeated[2][name], atol=1e-5, rtol=1e-4, msg=name)
    assert _shared_rows() is None  # nothing left set after the call


@pytest.mark.parametrize("setting", ["eager", "activation checkpointing"])
def test_question_encoder_repeats_the_images_where_the_attention_cannot_share(setting):
    # Eager attention would fail on 3 images for 6 questions; a checkpointed layer is recomputed in the backward
    # pass, outside the call that registered the rows. Both get the repeated rows, with the same states.
    fused = _recipe_model("sdpa").train()
    images, index, input_ids, attention_mask = _questions_about_three_images(fused)
    reference = _encoded_and_grads(fused, images, index, input_ids, attention_mask, shared=True)
    model = _recipe_model("eager" if setting == "eager" else "sdpa").train()
    if setting != "eager":
        model.gradient_checkpointing_enable()
    assert not cross_attention_shares_rows(model.text_encoder)
    rows = _cross_key_rows(model)
    result = _encoded_and_grads(model, images, index, input_ids, attention_mask, shared=True)
    assert set(rows) == {6}
    torch.testing.assert_close(result[0], reference[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result[1], reference[1], atol=1e-4, rtol=1e-4)


def test_shared_rows_hold_only_inside_their_block_and_nest():
    from retina_vqa.models.attention import shared_encoder_rows

    outer, inner = torch.tensor([0, 1, 1]), torch.tensor([0, 0])
    assert _shared_rows() is None
    with shared_encoder_rows(outer):
        with shared_encoder_rows(inner):
            assert _shared_rows() is inner
        assert _shared_rows() is outer
    assert _shared_rows() is None


def test_shared_rows_of_the_wrong_length_are_an_error():
    from retina_vqa.models.attention import shared_encoder_rows

    model = _recipe_model("sdpa").eval()
    images, index, input_ids, attention_mask = _questions_about_three_images(model)
    with pytest.raises(ValueError, match="5 rows for a batch of 6"), shared_encoder_rows(index[:5]):
        model.text_encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=images)
