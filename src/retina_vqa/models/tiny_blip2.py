"""Build the small BLIP-2 (OPT and T5 language models) and InstructBLIP used by the tests: configs and processors.

    python -m retina_vqa.models.tiny_blip2 --output_dir configs

writes ``configs/blip2-opt-tiny``, ``configs/blip2-t5-tiny`` and ``configs/instructblip-tiny`` (config.json,
tokenizer files, processor_config.json; never weights). Nothing is downloaded: the vocabulary is blip-tiny's
(`tiny_blip.build_vocab` over the synthetic texts), so every model here reads the same WordPiece tokens.

The language-model tokenizers behave like the ones of the real checkpoints, because code written against the
tiny models has to work on those unchanged:

* OPT (Salesforce/blip2-opt-*): a bos token starts every text and nothing ends it, so a prompt can be continued.
  Here bos is ``[CLS]`` and eos is ``[SEP]``; the model stops generating at eos, which it only learns to produce
  if the training labels end with ``tokenizer.eos_token_id`` (appended by the caller, as with the real OPT).
* T5 (Salesforce/blip2-flan-t5-*): no bos, eos ``[SEP]`` ends every text (prompt and answer alike); the
  decoder starts from the pad token, as T5 does.
* InstructBLIP: the OPT tokenizer for the language model, and a plain BERT tokenizer (``[CLS] text [SEP]``)
  over the same vocabulary for the Q-Former, which reads the question too.

Each processor adds ``<image>`` to its language-model tokenizer (`Blip2Processor.__init__`) and prepends
``num_query_tokens`` of them to every text it tokenises together with an image; the model overwrites their
embeddings with the Q-Former outputs. So the vocabulary size and ``image_token_index`` are read after the
processor exists.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import (
    BertTokenizer,
    Blip2Config,
    Blip2Processor,
    InstructBlipConfig,
    InstructBlipProcessor,
    PreTrainedTokenizerFast,
)

from .compat import BlipImageProcessorPil
from .tiny_blip import FUNDUS_MEAN, FUNDUS_STD, build_vocab

logger = logging.getLogger(__name__)

# Folder names under --output_dir.
OPT_DIR, T5_DIR, INSTRUCTBLIP_DIR = "blip2-opt-tiny", "blip2-t5-tiny", "instructblip-tiny"

NUM_QUERY_TOKENS = 4
# Positions of the language model. The longest synthetic example, "Question: {q} Answer: {a}" with its 4 image
# tokens, bos and eos, is 56 tokens: the template words are not in the vocabulary and split into characters
# (15 tokens). 128 leaves room for longer instructions.
MAX_POSITIONS = 128

# initializer_range. The defaults expect pretrained weights. Blip2VisionConfig's (and InstructBlipVisionConfig's)
# 1e-10 makes a ViT of zeros: at init the logits move by ~1e-8 between two fundus images. 0.05, as blip-tiny,
# gives unit-scale patch features. The Q-Former's learned queries enter through a LayerNorm (unit scale) and
# the image is added to them by cross-attention: with the default 0.02 the image accounts for under 1% of the
# variance of the query outputs across images, with 0.05 for about 4% (0.1: 14%), so the answer sees the image
# from the first steps without the queries drowning in it. The language models keep their own defaults.
TINY_VISION = {
    "initializer_range": 0.05,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 128,
    "patch_size": 16,
}
TINY_QFORMER = {
    "initializer_range": 0.05,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_POSITIONS,
}
TINY_OPT = {
    "model_type": "opt",
    "hidden_size": 64,
    "word_embed_proj_dim": 64,
    "ffn_dim": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_POSITIONS,
}
# Flan-T5's feed-forward (gated GELU) at d_model 64. Not Flan-T5's `tie_word_embeddings=False`: transformers 5
# ties T5's output head to the input embeddings regardless and only drops the d_model**-0.5 output scaling,
# which with T5's unit-variance embeddings starts a fresh model at logits of std ~8 (loss ~34, not ln 289).
TINY_T5 = {
    "model_type": "t5",
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 256,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "feed_forward_proj": "gated-gelu",
}


def _image_processor(image_size: int) -> BlipImageProcessorPil:
    return BlipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=FUNDUS_MEAN, image_std=FUNDUS_STD
    )


def _bert_tokenizer(vocab: list[str]) -> BertTokenizer:
    """blip-tiny's WordPiece tokenizer without its answer-decoder tokens: ``[CLS] text [SEP]``."""
    return BertTokenizer(
        vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True, model_max_length=MAX_POSITIONS
    )


def _language_model_tokenizer(vocab: list[str], style: str) -> PreTrainedTokenizerFast:
    """The WordPiece tokenizer with OPT's (bos first, no eos) or T5's (eos last, no bos) special-token layout.

    BertTokenizer always wraps a text in ``[CLS] ... [SEP]`` (it rebuilds that template whenever it is loaded),
    so the language models get a generic fast tokenizer whose template comes from `add_bos_token`/`add_eos_token`.
    """
    opt = style == "opt"
    return PreTrainedTokenizerFast(
        tokenizer_object=_bert_tokenizer(vocab).backend_tokenizer,
        bos_token="[CLS]" if opt else None,
        eos_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        add_bos_token=opt,
        add_eos_token=not opt,
        # The processor prepends the image tokens after tokenising: keep room for them.
        model_max_length=MAX_POSITIONS - NUM_QUERY_TOKENS,
    )


def _special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    # The language model's vocabulary includes <image>, added by the processor.
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _text_config(style: str, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    if style == "opt":
        return dict(TINY_OPT, **_special_token_ids(tokenizer))
    # T5 starts decoding from the pad token.
    return dict(TINY_T5, **_special_token_ids(tokenizer), decoder_start_token_id=tokenizer.pad_token_id)


def build_tiny_blip2(
    output_dir: str | Path, texts: Iterable[str], language_model: str = "opt", image_size: int = 128
) -> Blip2Processor:
    """Write a tiny BLIP-2 with an OPT (``language_model="opt"``) or T5 (``"t5"``) language model."""
    if language_model not in ("opt", "t5"):
        raise ValueError(f"language_model must be 'opt' or 't5', not {language_model!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(texts)
    processor = Blip2Processor(
        image_processor=_image_processor(image_size),
        tokenizer=_language_model_tokenizer(vocab, language_model),
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    processor.save_pretrained(output_dir)
    tokenizer = processor.tokenizer
    config = Blip2Config(
        vision_config=dict(TINY_VISION, image_size=image_size),
        # The Q-Former's own vocabulary (unused by Blip2ForConditionalGeneration, read by the retrieval heads) is
        # BERT's 30522 by default: the WordPiece one keeps those heads tiny too.
        qformer_config=dict(TINY_QFORMER, vocab_size=len(vocab)),
        text_config=_text_config(language_model, tokenizer),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    config.save_pretrained(output_dir)
    logger.info("Wrote a tiny BLIP-2 (%s, vocabulary %d) to %s", language_model, len(tokenizer), output_dir)
    return processor


def build_tiny_instructblip(
    output_dir: str | Path, texts: Iterable[str], image_size: int = 128
) -> InstructBlipProcessor:
    """Write a tiny InstructBLIP with an OPT language model; its Q-Former reads the question with BERT's layout."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab(texts)
    qformer_tokenizer = _bert_tokenizer(vocab)
    processor = InstructBlipProcessor(
        image_processor=_image_processor(image_size),
        tokenizer=_language_model_tokenizer(vocab, "opt"),
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    processor.save_pretrained(output_dir)
    tokenizer = processor.tokenizer
    qformer_config = dict(TINY_QFORMER, vocab_size=len(qformer_tokenizer), pad_token_id=qformer_tokenizer.pad_token_id)
    config = InstructBlipConfig(
        vision_config=dict(TINY_VISION, image_size=image_size),
        qformer_config=qformer_config,
        text_config=_text_config("opt", tokenizer),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    config.save_pretrained(output_dir)
    logger.info("Wrote a tiny InstructBLIP (vocabulary %d) to %s", len(tokenizer), output_dir)
    return processor


def build_all(output_dir: str | Path, texts: Iterable[str], image_size: int = 128) -> None:
    """The three folders under `output_dir`."""
    texts = list(texts)
    output_dir = Path(output_dir)
    build_tiny_blip2(output_dir / OPT_DIR, texts, "opt", image_size)
    build_tiny_blip2(output_dir / T5_DIR, texts, "t5", image_size)
    build_tiny_instructblip(output_dir / INSTRUCTBLIP_DIR, texts, image_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="configs", help="Folder to write the three model folders to.")
    parser.add_argument("--image_size", type=int, default=128, help="Square input size of the vision encoder.")
    args = parser.parse_args(argv)
    if args.image_size < 16 or args.image_size % TINY_VISION["patch_size"]:
        parser.error(f"--image_size must be a positive multiple of {TINY_VISION['patch_size']}.")
    from ..questions import all_texts

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_all(args.output_dir, all_texts(paraphrase=True), image_size=args.image_size)


if __name__ == "__main__":
    main()
