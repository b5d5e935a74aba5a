"""Tests for training-time augmentation (retina_vqa.data.augment) through the collators."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from retina_vqa.data import augment as augment_module
from retina_vqa.data.augment import FundusAugmentation, augment_batch, may_flip
from retina_vqa.data.collator import PromptCollator, VqaCollator
from retina_vqa.data.preprocessing import IMAGE_KEY

SIZE = 32
# Only the flip: every other change switched off, so a flipped image is exactly the mirror of the original.
FLIP_ONLY = {
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "channel_gain": 0.0,
    "illumination": 0.0,
    "min_area": 1.0,
    "max_area": 1.0,
    "max_rotation": 0.0,
    "flip_probability": 1.0,
}


def _png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _fundus(seed: int) -> np.ndarray:
    """A textured disc on black, brighter on its left: a mirror image is told apart from the original."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disc = (xx - SIZE / 2 + 0.5) ** 2 + (yy - SIZE / 2 + 0.5) ** 2 < (0.45 * SIZE) ** 2
    image = rng.uniform(60, 200, (SIZE, SIZE, 3)) * disc[..., None]
    image[:, : SIZE // 2] *= 1.2
    return np.clip(image, 0, 255)


def _row(image: int, question_type: str | None = "diagnosis") -> dict:
    row = {"input_ids": [2, 10 + image, 3], "decoder_input_ids": [5, 20, 3], "image": _png(_fundus(image))}
    row[IMAGE_KEY] = f"key-{image}"
    if question_type is not None:
        row["question_type"] = question_type
    return row


def _collator(augment: FundusAugmentation | None = None, **kwargs) -> VqaCollator:
    processor = BlipImageProcessorPil(size={"height": SIZE, "width": SIZE}, do_normalize=False)
    return VqaCollator(image_processor=processor, pad_token_id=0, augment=augment, **kwargs)


FEATURES = [_row(0), _row(0, "laterality"), _row(1), _row(1, "abnormality"), _row(2)]


def test_augmentation_changes_the_training_pixels_and_leaves_the_rest_of_the_batch():
    plain = _collator()(FEATURES)
    augmented = _collator(FundusAugmentation(seed=0))(FEATURES)
    assert plain["pixel_values"].shape == augmented["pixel_values"].shape == (3, 3, SIZE, SIZE)
    for image in range(3):
        assert (plain["pixel_values"][image] - augmented["pixel_values"][image]).abs().mean() > 0.01
    for key in ("input_ids", "attention_mask", "decoder_input_ids", "labels", "image_index"):
        assert torch.equal(plain[key], augmented[key])


def test_a_collator_without_augmentation_gives_the_images_as_they_are():
    batch = _collator()(FEATURES)
    expected = torch.tensor(np.stack([_fundus(i) for i in range(3)]) / 255.0, dtype=torch.float32).permute(0, 3, 1, 2)
    assert torch.allclose(batch["pixel_values"], expected, atol=1 / 255)


def test_same_seed_same_pixels_other_seed_other_pixels():
    first = _collator(FundusAugmentation(seed=3))(FEATURES)["pixel_values"]
    again = _collator(FundusAugmentation(seed=3))(FEATURES)["pixel_values"]
    other = _collator(FundusAugmentation(seed=4))(FEATURES)["pixel_values"]
    other_process = _collator(FundusAugmentation(seed=3, process_index=1))(FEATURES)["pixel_values"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, other_process)
    # The generator moves on: the next batch (next epoch) of the same rows is augmented differently.
    collator = _collator(FundusAugmentation(seed=3))
    assert not torch.equal(collator(FEATURES)["pixel_values"], collator(FEATURES)["pixel_values"])


def test_each_distinct_image_is_augmented_once_so_all_its_questions_see_the_same_pixels():
    # A collator that decodes an image per row (no sharing): rows of one image still get identical pixels.
    batch = _collator(FundusAugmentation(seed=1), share_images=False)(FEATURES)
    pixels = batch["pixel_values"]
    assert pixels.shape[0] == len(FEATURES)
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[2], pixels[3])
    assert not torch.equal(pixels[0], pixels[2])


def test_never_flips_an_image_asked_the_laterality_question_in_the_batch():
    collator = _collator(FundusAugmentation(seed=0, **FLIP_ONLY))
    batch = collator(FEATURES)
    pixels = batch["pixel_values"]
    original = _collator()(FEATURES)["pixel_values"]
    # Image 0 has a laterality row in the batch: untouched. Images 1 and 2 have none: mirrored (flip probability 1).
    assert torch.equal(pixels[0], original[0])
    assert torch.equal(pixels[1], original[1].flip(-1))
    assert torch.equal(pixels[2], original[2].flip(-1))
    assert not torch.equal(pixels[1], original[1])


def test_without_question_types_nothing_is_flipped():
    rows = [_row(0, None), _row(1, None)]
    flipped = _collator(FundusAugmentation(seed=0, **FLIP_ONLY))(rows)["pixel_values"]
    assert torch.equal(flipped, _collator()(rows)["pixel_values"])
    # A question type column the collator is told not to read counts as missing too.
    ignored = _collator(FundusAugmentation(seed=0, **FLIP_ONLY), question_type_column=None)(FEATURES)["pixel_values"]
    assert torch.equal(ignored, _collator()(FEATURES)["pixel_values"])


def test_may_flip_needs_known_types_none_of_them_laterality():
    assert may_flip(["diagnosis", "abnormality"])
    assert not may_flip(["diagnosis", "laterality"])
    assert not may_flip(["diagnosis", None])
    assert not may_flip([])


def test_black_surround_stays_black_and_rotation_fills_with_black():
    augmentation = FundusAugmentation(seed=0)
    rng = np.random.default_rng(0)
    black = Image.new("RGB", (SIZE, SIZE))
    assert np.asarray(augmentation.apply(black, rng)).max() == 0
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    rotated = np.asarray(
        FundusAugmentation(**{**FLIP_ONLY, "max_rotation": 10.0, "flip_probability": 0.0}).apply(
            white, np.random.default_rng(5)
        )
    )
    assert rotated[32, 32].min() == 255  # the centre stays
    corners = [rotated[0, 0], rotated[0, -1], rotated[-1, 0], rotated[-1, -1]]
    assert sum(int(c.max() == 0) for c in corners) >= 2  # two corners rotated in from outside: black fill


def test_crop_enlarges_the_field_around_the_centre():
    disc = _fundus(0)
    crop = FundusAugmentation(**{**FLIP_ONLY, "min_area": 0.7, "max_area": 1.0, "flip_probability": 0.0})
    rng = np.random.default_rng(0)
    zoomed = [np.asarray(crop.apply(Image.fromarray(disc.astype(np.uint8)), rng)) for _ in range(5)]
    field = (disc.max(axis=-1) > 0).mean()
    assert all((z.max(axis=-1) > 0).mean() >= field for z in zoomed)
    assert any((z.max(axis=-1) > 0).mean() > field + 0.02 for z in zoomed)


def test_zooming_out_shrinks_the_field_into_a_black_frame():
    """A wider camera frames a smaller retina: the field seen grows to up to 150% of the image, black around it."""
    disc = _fundus(0)
    wide = FundusAugmentation(**{**FLIP_ONLY, "min_area": 1.0, "max_area": 1.5, "flip_probability": 0.0})
    rng = np.random.default_rng(0)
    zoomed = [np.asarray(wide.apply(Image.fromarray(disc.astype(np.uint8)), rng)) for _ in range(5)]
    field = (disc.max(axis=-1) > 0).mean()
    assert all((z.max(axis=-1) > 0).mean() <= field + 0.01 for z in zoomed)
    assert any((z.max(axis=-1) > 0).mean() < field - 0.05 for z in zoomed)


def test_augment_batch_reuses_one_augmented_image_per_key():
    calls = []

    class Recording(FundusAugmentation):
        def __call__(self, image, flip_allowed=False):
            calls.append(flip_allowed)
            return image

    images = [Image.new("RGB", (4, 4), (i, i, i)) for i in range(3)]
    out = augment_batch(Recording(), images, ["a", "a", "b"], ["a", "a", "b", "b"], ["laterality", "x", "y", "z"])
    assert calls == [False, True]  # "a" once, not flippable; "b" once, flippable
    assert out[0] is out[1]


def test_each_dataloader_worker_draws_its_own_reproducible_stream(monkeypatch):
    augmentation = FundusAugmentation(seed=7)
    main_draw = augmentation.generator().random()
    worker = types.SimpleNamespace(id=0, seed=12345)
    monkeypatch.setattr(augment_module.torch.utils.data, "get_worker_info", lambda: worker)
    in_worker = FundusAugmentation(seed=7).generator().random()
    again = FundusAugmentation(seed=7).generator().random()
    worker.seed = 999  # the next epoch's worker (torch draws a new base seed)
    next_epoch = FundusAugmentation(seed=7).generator().random()
    assert in_worker == again
    assert len({main_draw, in_worker, next_epoch}) == 3


def test_prompt_collator_augments_each_image_once_too():
    collator = PromptCollator(
        image_processor=BlipImageProcessorPil(size={"height": SIZE, "width": SIZE}, do_normalize=False),
        num_query_tokens=2,
        image_token_id=9,
        pad_token_id=0,
        decoder_only=True,
        augment=FundusAugmentation(seed=0),
    )
    rows = [{**_row(0), "input_ids": [9, 9, 2, 40], "answer_ids": [50, 3]} for _ in range(2)]
    rows.append({**_row(1), "input_ids": [9, 9, 2, 41], "answer_ids": [51, 3]})
    pixels = collator(rows)["pixel_values"]
    plain = PromptCollator(**{**vars(collator), "augment": None})(rows)["pixel_values"]
    assert torch.equal(pixels[0], pixels[1]) and not torch.equal(pixels[0], plain[0])


@pytest.mark.parametrize(
    ("field", "value"), [("min_area", 0.0), ("min_area", 1.5), ("max_area", 0.9), ("flip_probability", 2.0)]
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        FundusAugmentation(**{field: value})


@pytest.mark.parametrize("prompt", [False, True], ids=["blip", "blip2"])
def test_a_flip_clears_the_eyes_side_from_the_image_objectives_labels(prompt):
    """Image labels (--image_loss_weight) travel with every row; a mirrored image keeps its other labels but loses
    the laterality one (a flipped left eye looks like a right eye). Image 0 has a laterality row: never flipped."""
    features = [dict(f, image_target=[7, 1]) for f in FEATURES]  # label columns: [laterality, abnormality]
    processor = BlipImageProcessorPil(size={"height": SIZE, "width": SIZE}, do_normalize=False)

    def collate(flip_probability: float) -> list[list[int]]:
        augmentation = FundusAugmentation(seed=0, **dict(FLIP_ONLY, flip_probability=flip_probability))
        if not prompt:
            return _collator(augmentation, orientation_targets=(0,))(features)["image_targets"].tolist()
        rows = [dict(f, input_ids=[9, 9, 2, 40], answer_ids=[50, 3]) for f in features]
        collator = PromptCollator(processor, 2, 9, 0, True, augment=augmentation, orientation_targets=(0,))
        return collator(rows)["image_targets"].tolist()

    assert collate(1.0) == [[7, 1], [7, 1], [-100, 1], [-100, 1], [-100, 1]]
    assert collate(0.0) == [[7, 1]] * 5
