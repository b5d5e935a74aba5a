import pytest
import torch

from retina_vqa.models.blip import generate_answers

from ..helpers import make_tiny_model
from ..same_answers import StepRecorder, agreeing_steps

QUESTIONS = [
    "is there any abnormality?",
    "what might be the cause of this condition in the left eye of this patient?",
    "which eye is this?",
]


def test_batched_answers_equal_one_by_one_answers_on_a_padded_batch(tiny_processor):
    """Each question of a padded batch is decoded as it is alone: at every step the same scores, up to float rounding
    (compared relative to their scale, `tests.same_answers`), so the same tokens unless two were near-tied. A
    question's padding attended to moves its first step's logits by most of their scale."""
    model = make_tiny_model()
    torch.manual_seed(1)
    pixels = torch.randn(len(QUESTIONS), 3, 128, 128)
    batch = tiny_processor.tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    assert (batch.attention_mask == 0).any(), "the batch must contain padding for this test to mean anything"
    for num_beams in (1, 3):
        settings = {"max_length": 8, "num_beams": num_beams}
        batched = StepRecorder()
        answers = generate_answers(model, pixels, batch.input_ids, batch.attention_mask, **settings, **batched.kwargs)
        compared = []
        for i, question in enumerate(QUESTIONS):
            encoded = tiny_processor.tokenizer([question], return_tensors="pt")
            alone = StepRecorder()
            answer = generate_answers(
                model, pixels[i : i + 1], encoded.input_ids, encoded.attention_mask, **settings, **alone.kwargs
            )
            # Greedy search: the answers themselves ([DEC] cut off) are the last step's choice. Beam search keeps the
            # running beams of every step, which the recorder compares.
            ends = (answer[:, 1:], answers[:, 1:]) if num_beams == 1 else (None, None)
            compared.append(agreeing_steps(alone.steps(0, num_beams, ends[0]), batched.steps(i, num_beams, ends[1])))
        assert sum(compared) > len(QUESTIONS), compared  # cached steps after the first one compared too


def test_answers_start_with_dec_and_stop_at_sep(tiny_processor):
    model = make_tiny_model()
    tokenizer = tiny_processor.tokenizer
    batch = tokenizer(QUESTIONS, padding=True, return_tensors="pt")
    pixels = torch.randn(3, 3, 128, 128)
    out = generate_answers(model, pixels, batch.input_ids, batch.attention_mask, max_length=6)
    assert (out[:, 0] == tokenizer.bos_token_id).all()
    assert out.shape[1] <= 6
    # Make [SEP] the decoder's first choice: generation must stop right there, [DEC] [SEP], not run on to 6.
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[tokenizer.sep_token_id] += 1e4
    out = generate_answers(model, pixels, batch.input_ids, batch.attention_mask, max_length=6)
    assert out.tolist() == [[tokenizer.bos_token_id, tokenizer.sep_token_id]] * 3


# ------------------------------------------------------------------------------------------ answering order


def test_answering_plan_covers_every_row_once_and_groups_questions():
    from retina_vqa.data.ordering import answering_plan

    questions = ["what is the diagnosis?", "is there any abnormality?", "Is there  any abnormality?", "which eye?"]
    keys, texts = [], []
    for image in ["a", "b", "c", "a", "d"]:  # image "a" comes back later: still one image
        keys += [image] * len(questions)
        texts += questions
    plan = answering_plan(keys, texts, batch_size=3, images_per_chunk=2)
    assert len(plan) == 2  # 4 distinct images, 2 per chunk
    seen = []
    for image_rows, batches in plan:
        assert len(image_rows) <= 2 and len({keys[row] for row in image_rows}) == len(image_rows)
        chunk_rows = [row for rows, _ in batches for row in rows]
        assert all(len(rows) <= 3 for rows, _ in batches)
        for rows, positions in batches:
            assert [keys[image_rows[p]] for p in positions] == [keys[row] for row in rows]
        # Sorted by normalised question text inside a chunk: equal questions are neighbours.
        normalised = [" ".join(texts[row].lower().split()) for row in chunk_rows]
        assert normalised == sorted(normalised)
        seen += chunk_rows
    assert sorted(seen) == list(range(len(keys)))
    assert [keys[row] for row in plan[0][0]] == ["a", "b"] and [keys[row] for row in plan[1][0]] == ["c", "d"]


def test_answering_plan_rejects_bad_sizes():
    from retina_vqa.data.ordering import answering_plan

    with pytest.raises(ValueError, match="2 image keys for 1 questions"):
        answering_plan(["a", "b"], ["q"], 4)
    with pytest.raises(ValueError, match="at least 1"):
        answering_plan(["a"], ["q"], 0)


def test_image_embeds_instead_of_pixels_give_the_same_answers():
    from retina_vqa.models.blip import encode_images

    model = make_tiny_model()
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 128, 128)
    input_ids = torch.randint(5, 100, (3, 6))
    index = torch.tensor([1, 0, 1])
    kwargs = {"max_length": 12, "num_beams": 1, "do_sample": False}
    expected = generate_answers(model, pixels, input_ids, image_index=index, **kwargs)
    with torch.no_grad():
        embeds = encode_images(model, pixels)
    assert torch.equal(
        generate_answers(model, None, input_ids, image_index=index, image_embeds=embeds, **kwargs), expected
    )
    with pytest.raises(ValueError, match="either pixel_values or image_embeds"):
        generate_answers(model, pixels, input_ids, image_embeds=embeds)


def test_answering_order_is_the_plan_flattened():
    from retina_vqa.data.ordering import answering_order, answering_plan

    keys = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    questions = ["what is the diagnosis?", "is it?", "which eye?"] * 3
    order = answering_order(keys, questions, images_per_chunk=2)
    plan = answering_plan(keys, questions, batch_size=1, images_per_chunk=2)
    assert order == [rows[0] for _, batches in plan for rows, _ in batches]
    assert sorted(order) == list(range(9)) and set(order[:6]) == set(range(6))  # chunk a, b first
    assert [questions[row] for row in order[:6]] == ["is it?"] * 2 + ["what is the diagnosis?"] * 2 + ["which eye?"] * 2
    assert answering_order([], []) == []
