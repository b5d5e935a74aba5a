import pytest
import torch
from transformers import AutoProcessor

from retina_vqa.arguments import ModelArguments
from retina_vqa.models.blip import check_tokenizer_matches, freeze, resize_image_size
from retina_vqa.training.model_setup import load_model, load_processor

from ..helpers import TINY_CONFIG, make_tiny_model


def scratch_args(**kwargs) -> ModelArguments:
    return ModelArguments(model_name_or_path="", config_name=str(TINY_CONFIG), **kwargs)


def test_from_scratch_with_label_smoothing_and_image_size():
    args = scratch_args(label_smoothing=0.1, image_size=96)
    processor = load_processor(args)
    model = load_model(args, processor)
    assert processor.image_processor.size == {"height": 96, "width": 96}
    assert model.config.vision_config.image_size == 96
    assert model.vision_model.embeddings.position_embedding.shape[1] == (96 // 16) ** 2 + 1
    assert model.text_decoder.label_smoothing == 0.1 == model.config.text_config.label_smoothing
    # The label smoothing really reaches the loss.
    ids = torch.tensor([[processor.tokenizer.bos_token_id, 20, 21, processor.tokenizer.sep_token_id]])
    batch = {
        "pixel_values": torch.randn(1, 3, 96, 96),
        "input_ids": torch.tensor([[2, 30, 3]]),
        "decoder_input_ids": ids,
        "labels": ids,
    }
    smoothed = model(**batch).loss
    model.text_decoder.label_smoothing = 0.0
    assert not torch.isclose(smoothed, model(**batch).loss)


def test_resize_image_size_equals_interpolate_pos_encoding():
    model = make_tiny_model(init_range=0.02)
    pixels = torch.randn(2, 3, 192, 192)
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        resize_image_size(model, 192)
        got = model.vision_model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got, expected)
    assert model.config.vision_config.image_size == 192
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        resize_image_size(model, 100)


def test_freeze_stops_gradients_only_where_asked():
    model = make_tiny_model()
    freeze(model, vision_model=True, text_encoder=False)
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    assert all(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.text_decoder.parameters())


def test_tokenizer_model_mismatch_is_caught():
    model = make_tiny_model()
    processor = AutoProcessor.from_pretrained(TINY_CONFIG)
    check_tokenizer_matches(model.config, processor)
    model.config.text_config.bos_token_id = processor.tokenizer.cls_token_id
    with pytest.raises(ValueError, match=r"bos_token_id \(\[DEC\], the decoder start\)"):
        check_tokenizer_matches(model.config, processor)


def test_model_arguments_validation():
    with pytest.raises(ValueError, match="--config_name"):
        ModelArguments(model_name_or_path="")
    with pytest.raises(ValueError, match="both given"):
        ModelArguments(model_name_or_path="x", config_name="y")
    with pytest.raises(ValueError, match="label_smoothing"):
        scratch_args(label_smoothing=1.5)


def test_missing_processor_names_the_fix(tmp_path):
    with pytest.raises(OSError, match="--processor_name"):
        load_processor(ModelArguments(model_name_or_path=str(tmp_path)))


def test_from_scratch_image_encoder_is_not_initialised_to_zero(tmp_path):
    # BlipVisionConfig's default initializer_range (1e-10) would give a ViT that never learns.
    from transformers import BlipConfig

    config = BlipConfig.from_pretrained(TINY_CONFIG)
    config.vision_config.initializer_range = 1e-10
    config.save_pretrained(tmp_path)
    args = ModelArguments(model_name_or_path="", config_name=str(tmp_path), processor_name=str(TINY_CONFIG))
    model = load_model(args, load_processor(args))
    weight = model.vision_model.encoder.layers[0].mlp.fc1.weight.detach()
    text_range = config.text_config.initializer_range
    assert abs(float(weight.std()) - text_range) < 0.2 * text_range  # replaced by the text range
    shipped = BlipConfig.from_pretrained(TINY_CONFIG)
    assert shipped.vision_config.initializer_range == 0.05 and shipped.text_config.initializer_range == 0.1


def test_shared_image_forward_equals_the_per_question_forward_and_saves_as_plain_blip(tmp_path):
    import json

    from retina_vqa.models.blip import SharedImageBlipForQuestionAnswering

    model = make_tiny_model(init_range=0.02)
    model.__class__ = SharedImageBlipForQuestionAnswering
    torch.manual_seed(0)
    images = torch.randn(2, 3, 128, 128)
    index = torch.tensor([0, 1, 0, 0])
    ids = torch.tensor([[2, 30, 31, 3], [2, 32, 3, 0], [2, 33, 3, 0], [2, 34, 35, 3]])
    mask = (ids != 0).long()
    answers = torch.tensor([[5, 40, 3], [5, 41, 3], [5, 42, 3], [5, 43, 3]])
    batch = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": answers, "labels": answers}
    shared = model(pixel_values=images, image_index=index, **batch)
    repeated = model(pixel_values=images[index], **batch)
    torch.testing.assert_close(shared.loss, repeated.loss)
    grads = torch.autograd.grad(shared.loss, model.vision_model.embeddings.patch_embedding.weight)[0]
    expected = torch.autograd.grad(repeated.loss, model.vision_model.embeddings.patch_embedding.weight)[0]
    # Same sum, different order of floating-point additions.
    torch.testing.assert_close(grads, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BlipForQuestionAnswering"]
    assert type(model) is SharedImageBlipForQuestionAnswering


def test_loss_with_num_items_in_batch_is_the_token_sum_over_that_count():
    from retina_vqa.models.blip import SharedImageBlipForQuestionAnswering

    model = make_tiny_model(init_range=0.02)
    model.__class__ = SharedImageBlipForQuestionAnswering
    model.text_decoder.label_smoothing = 0.0
    ids = torch.tensor([[2, 30, 3], [2, 31, 3]])
    answers = torch.tensor([[5, 40, 41, 3], [5, 42, 3, 0]])
    labels = answers.masked_fill(answers == 0, -100)
    labels[:, 0] = -100
    batch = {
        "pixel_values": torch.randn(2, 3, 128, 128),
        "input_ids": ids,
        "decoder_input_ids": answers,
        "labels": labels,
    }
    mean = model(**batch).loss  # transformers: mean over this batch's 5 target tokens
    tokens = int((labels[:, 1:] != -100).sum())
    assert tokens == 5
    torch.testing.assert_close(model(**batch, num_items_in_batch=tokens).loss, mean)
    # Counted over two processes' 10 tokens, this batch contributes half.
    torch.testing.assert_close(model(**batch, num_items_in_batch=2 * tokens).loss, mean / 2)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_load_model_uses_the_chosen_attention_and_saves_plain_blip(tmp_path, implementation):
    from transformers import AutoModelForVisualQuestionAnswering

    from retina_vqa.models.attention import attention_implementation

    args = scratch_args(attn_implementation=implementation)
    model = load_model(args, load_processor(args))
    assert attention_implementation(model) == implementation
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path)
    assert attention_implementation(reloaded) == "eager"  # nothing of ours in the saved files
    assert "attn" not in (tmp_path / "config.json").read_text().replace("_attn_implementation_autoset", "")


def _padded_positions(groups) -> int:
    return sum(len(rows) * width for rows, width in groups)


def test_answer_groups_cover_every_row_once_at_the_cheapest_padding():
    import itertools
    import random

    from retina_vqa.models.blip import answer_groups

    assert answer_groups([3, 3, 4, 28, 3]) == [([0, 1, 4, 2], 4), ([3], 28)]
    assert answer_groups([3, 4, 3]) == [([0, 2, 1], 4)]  # a split saves 2 positions and costs 12
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.choice([2, 3, 4, 5, 12, 28, 90]) for _ in range(rng.randint(1, 12))]
        split_cost = rng.choice([0, 5, 40])
        groups = answer_groups(lengths, split_cost=split_cost)
        assert sorted(r for rows, _ in groups for r in rows) == list(range(len(lengths)))
        assert all(lengths[r] <= width for rows, width in groups for r in rows)
        assert 1 <= len(groups) <= 3
        # Brute force over every way to cut the sorted distinct lengths into at most 3 runs.
        widths = sorted(set(lengths))
        best = min(
            sum(
                sum(1 for n in lengths if lo < n <= hi) * hi
                for lo, hi in zip((0, *cuts), (*cuts, widths[-1]), strict=True)
            )
            + split_cost * len(cuts)
            for k in range(3)
            for cuts in itertools.combinations(widths[:-1], k)
        )
        assert _padded_positions(groups) + split_cost * (len(groups) - 1) == best


def test_training_loss_decodes_short_and_long_answers_apart_with_the_same_loss_and_gradients():
    """A batch of short answers and one long report: the decoder runs on two widths, loss and gradients equal
    one decoder call over the whole padded batch."""
    from retina_vqa.models import blip
    from retina_vqa.models.blip import SharedImageBlipForQuestionAnswering

    model = make_tiny_model(init_range=0.02)
    model.__class__ = SharedImageBlipForQuestionAnswering
    torch.manual_seed(0)
    rows, long_length, width = 12, 40, 40
    answers = torch.zeros(rows, width, dtype=torch.long)
    lengths = [3, 4, 3, 3, 4, 3, long_length, 3, 4, 3, 3, 4]
    for i, n in enumerate(lengths):
        answers[i, 0] = 5
        answers[i, 1 : n - 1] = torch.randint(10, 200, (n - 2,))
        answers[i, n - 1] = 3
    mask = (answers != 0).long()
    labels = answers.masked_fill(mask == 0, -100)
    labels[:, 0] = -100
    batch = {
        "pixel_values": torch.randn(3, 3, 128, 128),
        "image_index": torch.arange(rows) % 3,
        "input_ids": torch.tensor([[2, 30, 31, 3]] * rows),
        "attention_mask": torch.ones(rows, 4, dtype=torch.long),
        "decoder_input_ids": answers,
        "decoder_attention_mask": mask,
        "labels": labels,
        "num_items_in_batch": int((labels[:, 1:] != -100).sum()),
    }
    widths = []
    hook = model.text_decoder.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    grouped = model(**batch).loss
    hook.remove()
    assert widths == [torch.Size([11, 4]), torch.Size([1, long_length])]
    weight = model.text_decoder.bert.encoder.layer[0].attention.self.query.weight
    grouped_grads = torch.autograd.grad(grouped, [weight, model.vision_model.embeddings.patch_embedding.weight])

    original = blip.answer_groups
    blip.answer_groups = lambda lengths: [(list(range(len(lengths))), max(lengths))]
    try:
        single = model(**batch).loss
    finally:
        blip.answer_groups = original
    single_grads = torch.autograd.grad(single, [weight, model.vision_model.embeddings.patch_embedding.weight])
    torch.testing.assert_close(grouped, single)
    for got, expected in zip(grouped_grads, single_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)


def test_answer_losses_are_in_the_batch_order():
    from retina_vqa.models.blip import answer_losses, decode_answers

    model = make_tiny_model(init_range=0.02)
    torch.manual_seed(1)
    answers = torch.tensor([[5, 40, 41, 42, 43, 44, 45, 3], [5, 46, 3, 0, 0, 0, 0, 0], [5, 47, 48, 3, 0, 0, 0, 0]])
    mask = (answers != 0).long()
    labels = answers.masked_fill(mask == 0, -100)
    question_embeds = torch.randn(3, 5, 128)
    question_mask = torch.ones(3, 5, dtype=torch.long)
    with torch.no_grad():
        expected = decode_answers(model, question_embeds, question_mask, answers, mask, labels=labels, reduction="none")
        got = answer_losses(model, question_embeds, question_mask, answers, mask, labels)
    assert len(set(got.tolist())) == 3
    torch.testing.assert_close(got, expected.loss)
