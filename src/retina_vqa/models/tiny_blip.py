"""Build the small BLIP used by the demo and the tests: config, WordPiece tokenizer and image processor.

    python -m retina_vqa.models.tiny_blip --output_dir configs/blip-tiny
    python -m retina_vqa.models.tiny_blip --output_dir configs/blip-tiny-multidisease --vocabulary multidisease \
        --max_text_positions 192

Nothing is downloaded: the vocabulary is every word the synthetic RetinaVQA generator can produce, plus
single characters and ``##`` continuations so that any other lowercase text still tokenises (into
characters) instead of turning into ``[UNK]``; ``--vocabulary multidisease`` adds the words of the multi-disease
questions and findings reports (a separate folder: the word ids are ordered by frequency, so new words would
renumber the DR vocabulary), and findings reports need more text positions. The special tokens mirror
Salesforce/blip-vqa-base:
``[DEC]`` is the bos token that starts every answer, ``[SEP]`` ends it, ``[PAD]`` pads.

`random_tiny_blip` makes an untrained model of such a config whose answers still vary with image and question,
for the tests and benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import logging
import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import BertTokenizer, BlipConfig, BlipProcessor

from .compat import BlipImageProcessorPil

if TYPE_CHECKING:
    from transformers import BlipForQuestionAnswering

logger = logging.getLogger(__name__)

# Per-channel mean and std of synthetic fundus photographs (300 training images of the demo set, 128 px,
# black surround included), for normalising pixels of a model trained from scratch. CLIP's statistics,
# which pretrained BLIP keeps, leave the green and blue channels (where haemorrhages and exudates show)
# squeezed into a sliver of the input range. tests/models/test_tiny_blip.py re-measures them.
FUNDUS_MEAN = [0.4394, 0.1702, 0.0817]
FUNDUS_STD = [0.3249, 0.1498, 0.0957]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]

# Sizes: about 2.6M parameters, trains on 2 CPU cores in minutes. Patch 16 at 128 px gives an 8x8 grid.
# initializer_range: BLIP's defaults expect pretrained weights (vision 1e-10: a ViT of zeros that never learns
# to see). From scratch, at 0.02 everywhere the image reaches the answer decoder only through two small
# cross-attention projections: the model sits at the question prior (same answer per question) for epochs.
# Wider initialisations (0.05 vision, 0.1 text) let the image signal through from the first steps.
TINY_VISION = {
    "initializer_range": 0.05,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": 128,
    "patch_size": 16,
}
TINY_TEXT = {
    "initializer_range": 0.1,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}


def _basic_tokens(text: str) -> list[str]:
    # The same split BertTokenizer does before WordPiece: whitespace, then punctuation as its own token.
    tokens = []
    for word in text.lower().split():
        current = ""
        for char in word:
            if char in string.punctuation:
                if current:
                    tokens.append(current)
                tokens.append(char)
                current = ""
            else:
                current += char
        if current:
            tokens.append(current)
    return tokens


def build_vocab(texts: Iterable[str]) -> list[str]:
    """Special tokens, characters, ``##`` characters, then the corpus words by frequency (ties by name)."""
    counts = collections.Counter(token for text in texts for token in _basic_tokens(text))
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    seen = set(vocab)
    for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return vocab


def build_tiny_blip(
    output_dir: str | Path, texts: Iterable[str], image_size: int = 128, max_text_positions: int | None = None
) -> BlipProcessor:
    """Write config.json, tokenizer files and preprocessor_config.json to `output_dir`.

    ``max_text_positions`` (default ``TINY_TEXT``'s 64) bounds question and answer lengths in tokens.
    """
    positions = max_text_positions or TINY_TEXT["max_position_embeddings"]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(texts)
    vocab_file = output_dir / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(
        vocab=str(vocab_file),
        do_lower_case=True,
        bos_token="[DEC]",
        additional_special_tokens=["[ENC]"],
        model_max_length=positions,
    )
    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=FUNDUS_MEAN, image_std=FUNDUS_STD
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(output_dir)

    text_config = dict(
        TINY_TEXT,
        max_position_embeddings=positions,
        vocab_size=len(vocab),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    vision_config = dict(TINY_VISION, image_size=image_size)
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=128)
    config.save_pretrained(output_dir)
    logger.info("Wrote a tiny BLIP (vocabulary %d) to %s", len(vocab), output_dir)
    return processor


def random_tiny_blip(config_dir: str | Path, init_range: float = 0.5, seed: int = 0) -> BlipForQuestionAnswering:
    """A random BLIP of ``config_dir`` (e.g. configs/blip-tiny) whose answers depend on its inputs: a wide
    initialisation (``init_range`` for text and vision) makes untrained outputs vary. Seeded with ``seed``, in eval
    mode, with the cross-attention mask fix (`models.attention`)."""
    import torch
    from transformers import AutoConfig, BlipForQuestionAnswering

    from .attention import apply_cross_attention_mask_fix

    config = AutoConfig.from_pretrained(config_dir)
    config.text_config.initializer_range = init_range
    config.vision_config.initializer_range = init_range
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config).eval()
    apply_cross_attention_mask_fix(model)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="configs/blip-tiny", help="Folder to write the files to.")
    parser.add_argument("--image_size", type=int, default=128, help="Square input size of the vision encoder.")
    parser.add_argument(
        "--vocabulary",
        choices=("dr", "multidisease"),
        default="dr",
        help="dr: the DR-only synthetic texts (configs/blip-tiny); multidisease: also the multi-disease questions "
        "and findings reports (configs/blip-tiny-multidisease).",
    )
    parser.add_argument(
        "--max_text_positions",
        type=int,
        default=None,
        help=f"Longest question or answer in tokens (default {TINY_TEXT['max_position_embeddings']}; findings "
        "reports need up to about 165).",
    )
    args = parser.parse_args(argv)
    if args.image_size < 16 or args.image_size % TINY_VISION["patch_size"]:
        parser.error(f"--image_size must be a positive multiple of {TINY_VISION['patch_size']}.")
    from ..questions import all_texts, condition_texts

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    texts = all_texts(paraphrase=True)
    if args.vocabulary == "multidisease":
        from ..synthetic.reports import report_texts

        texts = texts + condition_texts(paraphrase=True) + report_texts()
    build_tiny_blip(args.output_dir, texts, image_size=args.image_size, max_text_positions=args.max_text_positions)


if __name__ == "__main__":
    main()
