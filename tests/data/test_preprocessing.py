"""Tokenised once: questions, BLIP's decoder inputs framed as [DEC] answer [SEP], and each row's image key."""

import hashlib

import datasets
from transformers import AutoProcessor, BertTokenizerFast

from retina_vqa.arguments import DataTrainingArguments
from retina_vqa.data.images import image_key, load_image
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.data.preprocessing import IMAGE_KEY, prepare_split
from retina_vqa.models.family import tokenize_questions_and_answers

from ..helpers import TINY_CONFIG


def test_decoder_inputs_start_with_dec_and_end_with_sep():
    processor = AutoProcessor.from_pretrained(TINY_CONFIG)
    tokenizer = processor.tokenizer
    out = tokenize_questions_and_answers(
        {"question": ["Is there any abnormality? "], "answer": [" moderate dr"]},
        tokenizer,
        "question",
        "answer",
        max_question_length=32,
        max_answer_length=8,
    )
    question, answer = out["input_ids"][0], out["decoder_input_ids"][0]
    assert question[0] == tokenizer.cls_token_id and question[-1] == tokenizer.sep_token_id
    assert answer[0] == tokenizer.bos_token_id != tokenizer.cls_token_id
    assert answer[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(answer, skip_special_tokens=True) == "moderate dr"
    long = tokenize_questions_and_answers(
        {"question": ["q"], "answer": ["one two three four five six seven"]},
        tokenizer,
        "question",
        "answer",
        32,
        5,
    )
    assert len(long["decoder_input_ids"][0]) == 5 and long["decoder_input_ids"][0][-1] == tokenizer.sep_token_id


def test_prepare_split_keeps_images_encoded(question_rows_dataset_dir):
    processor = AutoProcessor.from_pretrained(TINY_CONFIG)
    train = load_dataset_dir(str(question_rows_dataset_dir))["train"]
    prepared = prepare_split(train, processor.tokenizer, DataTrainingArguments(dataset_dir="x"), True, "train")
    row = prepared[0]
    assert isinstance(row["image"], dict) and row["image"]["bytes"][:4] == b"\x89PNG"
    assert "decoder_input_ids" in row and "question_type" in row
    assert "pixel_values" not in prepared.column_names


def test_prepared_image_rows_hold_references_not_bytes(tiny_dataset_dir):
    """Image rows: the tokenised rows (and their cache file) hold a reference per question, keyed by its SHA-1."""
    processor = AutoProcessor.from_pretrained(TINY_CONFIG)
    train = load_dataset_dir(str(tiny_dataset_dir))["train"]
    prepared = prepare_split(train, processor.tokenizer, DataTrainingArguments(dataset_dir="x"), True, "train")
    row = prepared[0]
    assert row["image"]["bytes"] is None and row["image"]["path"].startswith("retina-vqa-image://")
    stored = datasets.load_from_disk(str(tiny_dataset_dir))["train"].cast_column("image", datasets.Image(decode=False))
    first_image = stored[0]["image"]["bytes"]
    assert row["image_key"] == row["image"]["path"].rsplit("#", 1)[1] == hashlib.sha1(first_image).hexdigest()
    assert load_image(row["image"]).tobytes() == load_image(first_image).tobytes()


def test_answers_are_framed_whatever_special_tokens_the_tokenizer_adds(tmp_path):
    """The first answer token is never dropped blindly: a tokenizer that adds no [CLS] keeps every answer word."""
    tokenizer = AutoProcessor.from_pretrained(TINY_CONFIG).tokenizer
    tokenizer.save_pretrained(tmp_path)
    plain = BertTokenizerFast.from_pretrained(tmp_path)
    # Same vocabulary, but its template adds nothing around the text.
    plain._tokenizer.post_processor = None
    assert plain("moderate dr")["input_ids"][0] != plain.cls_token_id
    for candidate in (tokenizer, plain):
        ids = tokenize_questions_and_answers(
            {"question": ["q"], "answer": ["moderate dr"]}, candidate, "question", "answer", 32, 8
        )["decoder_input_ids"][0]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.decode(ids[1:-1]) == "moderate dr"


def test_rows_get_their_image_key():
    processor = AutoProcessor.from_pretrained(TINY_CONFIG)
    rows = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b"a", "path": None}, {"bytes": b"a", "path": None}, {"bytes": b"b", "path": None}],
            "question": ["q1", "q2", "q3"],
            "answer": ["yes", "no", "yes"],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
        ),
    )
    prepared = prepare_split(rows, processor.tokenizer, DataTrainingArguments(dataset_dir="x"), True, "train")
    keys = prepared[IMAGE_KEY]
    assert keys[0] == keys[1] != keys[2]
    assert keys[0] == image_key({"bytes": b"a", "path": None})
