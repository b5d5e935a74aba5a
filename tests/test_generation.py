import torch

from retina_vqa.generation import generate_answers

from .conftest import make_tiny_model

QUESTIONS = [
    "is there any abnormality?",
    "what might be the cause of this condition in the left eye of this patient?",
    "which eye is this?",
]


def _one_by_one(model, processor, pixels, **kwargs):
    answers = []
    for i, question in enumerate(QUESTIONS):
        encoded = processor.tokenizer([question], return_tensors="pt")
        answers.append(
            generate_answers(model, pixels[i : i + 1], encoded.input_ids, encoded.attention_mask, **kwargs)[0].tolist()
        )
    return answers


def _strip(ids, pad_id):
    return [[t for t in row if t != pad_id] for row in ids]


def test_batched_answers_equal_one_by_one_answers_on_a_padded_batch(tiny_processor):
    model = make_tiny_model()
    torch.manual_seed(1)
    pixels = torch.randn(len(QUESTIONS), 3, 128, 128)
    batch = tiny_processor.tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    assert (batch.attention_mask == 0).any(), "the batch must contain padding for this test to mean anything"
    pad = model.config.text_config.pad_token_id
    for num_beams in (1, 3):
        batched = generate_answers(
            model, pixels, batch.input_ids, batch.attention_mask, max_length=8, num_beams=num_beams
        )
        single = _one_by_one(model, tiny_processor, pixels, max_length=8, num_beams=num_beams)
        assert _strip(batched.tolist(), pad) == _strip(single, pad)
        # transformers' own generate ignores the question mask: its padded rows answer differently.
        stock = model.generate(
            input_ids=batch.input_ids,
            pixel_values=pixels,
            attention_mask=batch.attention_mask,
            max_length=8,
            num_beams=num_beams,
        )
        assert _strip(stock.tolist(), pad) != _strip(single, pad)


def test_answers_start_with_dec_and_stop_at_sep(tiny_processor):
    model = make_tiny_model()
    batch = tiny_processor.tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    out = generate_answers(model, torch.randn(3, 3, 128, 128), batch.input_ids, batch.attention_mask, max_length=6)
    assert (out[:, 0] == tiny_processor.tokenizer.bos_token_id).all()
    assert out.shape[1] <= 6
