from transformers import AutoProcessor, BlipConfig

from retina_vqa.models.tiny_blip import build_tiny_blip
from retina_vqa.synthetic import all_texts

from ..helpers import TINY_CONFIG, same_built_file


def test_shipped_files_are_what_the_script_builds(tmp_path):
    build_tiny_blip(tmp_path, all_texts(paraphrase=True))
    for name in ("vocab.txt", "config.json", "tokenizer_config.json", "processor_config.json"):
        assert same_built_file(tmp_path / name, TINY_CONFIG / name), (
            f"configs/blip-tiny/{name} is stale: run "
            "`python -m retina_vqa.models.tiny_blip --output_dir configs/blip-tiny`"
        )


def test_vocabulary_covers_every_synthetic_text_without_unknown_tokens():
    tokenizer = AutoProcessor.from_pretrained(TINY_CONFIG).tokenizer
    for text in all_texts(paraphrase=True):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")
    # Unseen words fall back to characters rather than [UNK].
    assert tokenizer.unk_token_id not in tokenizer("xylophone retinoblastoma")["input_ids"]


def test_special_tokens_agree_with_the_config():
    tokenizer = AutoProcessor.from_pretrained(TINY_CONFIG).tokenizer
    config = BlipConfig.from_pretrained(TINY_CONFIG)
    assert tokenizer.bos_token == "[DEC]" and config.text_config.bos_token_id == tokenizer.bos_token_id
    assert config.text_config.sep_token_id == tokenizer.sep_token_id
    assert config.text_config.pad_token_id == tokenizer.pad_token_id
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.text_config.encoder_hidden_size == config.vision_config.hidden_size


def test_fundus_statistics_match_freshly_generated_images():
    import numpy as np

    from retina_vqa.models.tiny_blip import FUNDUS_MEAN, FUNDUS_STD
    from retina_vqa.synthetic import generate_dataset

    train = generate_dataset(60, 0, 0, image_size=128, seed=11, num_workers=1, question_types=["diagnosis"])["train"]
    pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float64) / 255 for image in train["image"]])
    assert np.allclose(pixels.mean(axis=(0, 1, 2)), FUNDUS_MEAN, atol=0.03)
    assert np.allclose(pixels.std(axis=(0, 1, 2)), FUNDUS_STD, atol=0.03)
