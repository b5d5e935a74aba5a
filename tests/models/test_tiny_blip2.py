import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    Blip2ForConditionalGeneration,
    InstructBlipForConditionalGeneration,
)

from retina_vqa.models.blip2 import init_query_tokens
from retina_vqa.models.tiny_blip2 import INSTRUCTBLIP_DIR, NUM_QUERY_TOKENS, OPT_DIR, T5_DIR, build_all
from retina_vqa.synthetic import all_texts

from ..helpers import ROOT, TINY_CONFIG, same_built_file

CONFIGS = ROOT / "configs"
FOLDERS = (OPT_DIR, T5_DIR, INSTRUCTBLIP_DIR)
PROMPT = "Question: is there any abnormality? Answer:"


def _files(folder):
    return sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())


def test_shipped_files_are_what_the_script_builds(tmp_path):
    build_all(tmp_path, all_texts(paraphrase=True))
    for name in FOLDERS:
        built, shipped = tmp_path / name, CONFIGS / name
        assert _files(built) == _files(shipped), f"configs/{name} has other files than a rebuild"
        for relative in _files(built):
            assert same_built_file(built / relative, shipped / relative), (
                f"configs/{name}/{relative} is stale: run `python -m retina_vqa.models.tiny_blip2 --output_dir configs`"
            )
        assert not any(path.suffix in (".safetensors", ".bin") for path in _files(shipped))


@pytest.fixture(scope="module", params=FOLDERS)
def tiny(request):
    """(processor, config, model) of one shipped folder; the model is random and in eval mode."""
    processor = AutoProcessor.from_pretrained(CONFIGS / request.param)
    config = AutoConfig.from_pretrained(CONFIGS / request.param)
    model_class = (
        InstructBlipForConditionalGeneration if config.model_type == "instructblip" else Blip2ForConditionalGeneration
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    init_query_tokens(model)
    return processor, config, model


def _images(count):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(count)]


def _labels(processor, config, inputs, answer="yes"):
    """Answer labels: the answer ids for T5; for OPT, the answer and eos appended to the inputs, labels as long as
    input_ids with everything else -100 (InstructBLIP needs that length; BLIP-2 slices its logits to the labels'
    length, which in fp32 fails on a batch with `view size is not compatible` and never trains the first label)."""
    tokenizer = processor.tokenizer
    if not config.use_decoder_only_language_model:
        return tokenizer([answer], return_tensors="pt")["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
    inputs["attention_mask"] = torch.cat(
        [inputs["attention_mask"], torch.ones(1, len(answer_ids), dtype=torch.long)], 1
    )
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -len(answer_ids) :] = torch.tensor(answer_ids)
    return labels


def test_processor_prepends_one_image_token_per_query(tiny):
    processor, config, _ = tiny
    assert config.num_query_tokens == processor.num_query_tokens == NUM_QUERY_TOKENS
    ids = processor(images=_images(1), text=PROMPT, return_tensors="pt")["input_ids"][0].tolist()
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert config.image_token_index == image_token_id
    assert ids[:NUM_QUERY_TOKENS] == [image_token_id] * NUM_QUERY_TOKENS
    assert image_token_id not in ids[NUM_QUERY_TOKENS:]


def test_special_tokens_agree_with_the_config(tiny):
    processor, config, _ = tiny
    tokenizer, text_config = processor.tokenizer, config.text_config
    assert text_config.vocab_size == len(tokenizer)  # <image> included
    assert text_config.pad_token_id == tokenizer.pad_token_id
    assert text_config.eos_token_id == tokenizer.eos_token_id is not None
    assert text_config.bos_token_id == tokenizer.bos_token_id
    ids = tokenizer("yes")["input_ids"]
    if config.use_decoder_only_language_model:
        # OPT's layout: bos starts the text, nothing ends it, so a prompt can be continued.
        assert ids[0] == tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id
    else:
        # T5's: no bos, eos ends every text; decoding starts from the pad token.
        assert tokenizer.bos_token_id is None and ids[-1] == tokenizer.eos_token_id
        assert text_config.decoder_start_token_id == tokenizer.pad_token_id
    if config.model_type == "instructblip":
        qformer_tokenizer = processor.qformer_tokenizer
        assert config.qformer_config.vocab_size == len(qformer_tokenizer)
        assert config.qformer_config.pad_token_id == qformer_tokenizer.pad_token_id


def test_vocabulary_is_blip_tiny_s(tiny):
    processor, _, _ = tiny
    blip_tiny = (TINY_CONFIG / "vocab.txt").read_text(encoding="utf-8").split()
    vocab = processor.tokenizer.get_vocab()
    assert sorted(vocab, key=vocab.get) == blip_tiny + ["<image>"]
    if hasattr(processor, "qformer_tokenizer"):
        vocab = processor.qformer_tokenizer.get_vocab()
        assert sorted(vocab, key=vocab.get) == blip_tiny


def test_vocabulary_covers_every_synthetic_text_without_unknown_tokens(tiny):
    processor, _, _ = tiny
    tokenizers = [processor.tokenizer] + (
        [processor.qformer_tokenizer] if hasattr(processor, "qformer_tokenizer") else []
    )
    for tokenizer in tokenizers:
        for text in all_texts(paraphrase=True) + [PROMPT]:
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.unk_token_id not in ids, text
            decoded = tokenizer.decode(ids, skip_special_tokens=True)
            assert decoded.replace(" ", "") == text.lower().replace(" ", "")


def test_loss_is_finite_and_logits_depend_on_the_image(tiny):
    processor, config, model = tiny
    first, second = _images(2)
    inputs = processor(images=first, text=PROMPT, return_tensors="pt")
    labels = _labels(processor, config, inputs)
    with torch.no_grad():
        output = model(**inputs, labels=labels)
        assert torch.isfinite(output.loss)
        other = dict(inputs, pixel_values=processor(images=second, return_tensors="pt")["pixel_values"])
        assert not torch.allclose(output.logits, model(**other, labels=labels).logits, atol=1e-4)
        # The image reaches the language model only through the <image> placeholders: text tokenised without
        # them gives logits that ignore the pixels (what the processor's placeholders are there to prevent).
        blind_inputs = {key: inputs[key][:, NUM_QUERY_TOKENS:] for key in ("input_ids", "attention_mask")}
        blind_inputs.update({key: value for key, value in inputs.items() if key.startswith("qformer_")})
        text_only = labels[:, NUM_QUERY_TOKENS:] if config.use_decoder_only_language_model else labels
        blind = model(**blind_inputs, pixel_values=inputs["pixel_values"], labels=text_only).logits
        blind_other = model(**blind_inputs, pixel_values=other["pixel_values"], labels=text_only).logits
        assert torch.allclose(blind, blind_other)


def test_generate_returns_the_prompt_then_the_answer_for_opt_and_the_answer_alone_for_t5(tiny):
    processor, config, model = tiny
    inputs = processor(images=_images(1), text=PROMPT, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
    if config.use_decoder_only_language_model:
        prompt_length = inputs["input_ids"].shape[1]
        assert generated.shape == (1, prompt_length + 3)
        assert torch.equal(generated[:, :prompt_length], inputs["input_ids"])
    else:
        assert generated.shape == (1, 1 + 3) and generated[0, 0] == config.text_config.decoder_start_token_id


def test_random_query_tokens_keep_the_first_gradients_sane():
    # transformers starts the learned queries at zero; the Q-Former's first LayerNorm of a zero vector
    # (eps 1e-12) then gives them gradients ~1e10, and clipping the total norm shrinks every other gradient.
    processor = AutoProcessor.from_pretrained(CONFIGS / OPT_DIR)
    config = AutoConfig.from_pretrained(CONFIGS / OPT_DIR)
    inputs = processor(images=_images(1), text=PROMPT, return_tensors="pt")
    labels = _labels(processor, config, inputs)
    norms = []
    for randomise in (False, True):
        torch.manual_seed(0)
        model = Blip2ForConditionalGeneration(config)
        if randomise:
            init_query_tokens(model)
        model(**inputs, labels=labels).loss.backward()
        norms.append(model.query_tokens.grad.norm().item())
    assert norms[0] > 1e6 and norms[1] < 10
