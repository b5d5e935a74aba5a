import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from retina_vqa.data.collator import VqaCollator


def _png(value: int, size=(40, 30)) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.fixture
def collator():
    return VqaCollator(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), pad_token_id=0)


def test_pads_questions_and_answers_and_masks_labels(collator):
    features = [
        {"input_ids": [2, 10, 11, 3], "decoder_input_ids": [5, 20, 3], "image": _png(0), "question": "a"},
        {"input_ids": [2, 12, 3], "decoder_input_ids": [5, 21, 22, 3], "image": _png(255), "question": "b"},
    ]
    batch = collator(features)
    assert batch["input_ids"].tolist() == [[2, 10, 11, 3], [2, 12, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["decoder_input_ids"].tolist() == [[5, 20, 3, 0], [5, 21, 22, 3]]
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 20, 3, -100], [-100, 21, 22, 3]]
    assert set(batch) == {
        "pixel_values",
        "input_ids",
        "attention_mask",
        "decoder_input_ids",
        "decoder_attention_mask",
        "labels",
    }
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.float32
    # A black and a white image stay distinguishable after normalisation.
    assert batch["pixel_values"][0].mean() < batch["pixel_values"][1].mean()


def test_a_real_token_with_the_pad_id_stays_in_the_labels():
    collator = VqaCollator(image_processor=BlipImageProcessorPil(size={"height": 16, "width": 16}), pad_token_id=7)
    batch = collator(
        [
            {"input_ids": [2, 3], "decoder_input_ids": [5, 7, 3], "image": _png(9)},
            {"input_ids": [2, 3], "decoder_input_ids": [5, 3], "image": _png(9)},
        ]
    )
    assert batch["labels"].tolist() == [[-100, 7, 3], [-100, 3, -100]]


def test_pad_to_multiple_of(collator):
    collator.pad_to_multiple_of = 8
    batch = collator([{"input_ids": [2, 10, 3], "decoder_input_ids": [5, 3], "image": _png(1)}])
    assert batch["input_ids"].shape == (1, 8)
    assert batch["labels"].tolist() == [[-100, 3] + [-100] * 6]


def test_rows_without_answers_give_no_labels(collator):
    batch = collator([{"input_ids": [2, 10, 3], "image": _png(1)}])
    assert "labels" not in batch and "decoder_input_ids" not in batch
    assert batch["input_ids"].tolist() == [[2, 10, 3]]


def test_missing_keys_are_named(collator):
    with pytest.raises(KeyError, match=r"missing \['image'\].*input_ids"):
        collator([{"input_ids": [2, 3], "pixels": None}])


def test_undecodable_image_names_the_row(collator):
    bad = {"input_ids": [2, 3], "image": {"bytes": b"not an image", "path": None}}
    with pytest.raises(ValueError, match="batch row 1"):
        collator([{"input_ids": [2, 3], "image": _png(1)}, bad])


def test_rows_with_the_same_image_share_one_encoding(collator):
    a, b = _png(10), _png(200)
    features = [
        {"input_ids": [2, 3], "image": a, "image_key": "a"},
        {"input_ids": [2, 3], "image": b, "image_key": "b"},
        {"input_ids": [2, 3], "image": a, "image_key": "a"},
    ]
    batch = collator(features)
    assert batch["pixel_values"].shape[0] == 2
    assert batch["image_index"].tolist() == [0, 1, 0]
    collator.share_images = False
    unshared = collator(features)
    assert "image_index" not in unshared and unshared["pixel_values"].shape[0] == 3
    torch.testing.assert_close(unshared["pixel_values"], batch["pixel_values"][batch["image_index"]])
