import torch

from retina_vqa.attention import MaskedBlipTextSelfAttention, apply_cross_attention_mask_fix

from .conftest import make_tiny_model


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
    # Unpatched (as in transformers) the padding leaks into the logits.
    for module in model.modules():
        if isinstance(module, MaskedBlipTextSelfAttention):
            module.__class__ = MaskedBlipTextSelfAttention.__mro__[1]
    leaked = model.text_decoder(input_ids=start, encoder_hidden_states=padded, encoder_attention_mask=mask).logits
    assert (leaked - short).abs().max() > 1e-3
