import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from retina_vqa.arguments import DataTrainingArguments
from retina_vqa.data.augment import FundusAugmentation
from retina_vqa.data.collator import PromptCollator, VqaCollator
from retina_vqa.data.image_cache import DecodedImageCache
from retina_vqa.data.images import ImageLoadError


def _png(seed: int, size=(40, 30)) -> dict:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _rows(images: dict[str, dict], questions_per_image: int = 2) -> list[dict]:
    return [
        {
            "input_ids": [2, 10 + q, 3],
            "decoder_input_ids": [5, 20 + q, 3],
            "image": source,
            "image_key": key,
            "question_type": "laterality" if q == 0 and key.endswith("0") else "abnormality",
        }
        for key, source in images.items()
        for q in range(questions_per_image)
    ]


def _collator(cache=None, **kwargs) -> VqaCollator:
    return VqaCollator(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
        pad_token_id=0,
        image_cache=cache,
        **kwargs,
    )


def _rgb(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (10, 20, 30))


def test_keeps_images_within_the_budget_and_counts_lookups():
    cache = DecodedImageCache(max_bytes=2 * 10 * 10 * 3)
    first, second, third = _rgb(10, 10), _rgb(10, 10), _rgb(10, 10)
    assert cache.get("a") is None
    assert cache.add("a", first) and cache.add("b", second)
    assert not cache.add("c", third)  # past the budget: not kept
    assert cache.add("a", third)  # already there: the first pixels stay
    assert cache.get("a") is first and cache.get("b") is second and cache.get("c") is None
    assert (len(cache), cache.nbytes, cache.hits, cache.misses) == (2, 600, 2, 2)
    assert "c" not in cache and "a" in cache


def test_keeps_rgb_only_and_rejects_a_negative_budget():
    cache = DecodedImageCache(max_bytes=10**6)
    assert not cache.add("grey", Image.new("L", (4, 4)))
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        DecodedImageCache(max_bytes=-1)


def test_per_process_splits_the_budget_among_workers():
    assert DecodedImageCache.per_process(2.0, num_workers=4).max_bytes == 5 * 10**8
    assert DecodedImageCache.per_process(2.0, num_workers=0).max_bytes == 2 * 10**9
    assert DecodedImageCache.per_process(0, num_workers=2) is None
    with pytest.raises(ValueError, match=">= 0 GB"):
        DecodedImageCache.per_process(-0.5, num_workers=0)


def test_a_pickled_cache_arrives_empty_with_its_budget():
    cache = DecodedImageCache(max_bytes=10**6)
    cache.add("a", _rgb(8, 8))
    copy = pickle.loads(pickle.dumps(cache))
    assert (len(copy), copy.max_bytes, copy.nbytes) == (0, 10**6, 0)
    assert len(cache) == 1


def test_batches_are_the_same_and_later_batches_decode_nothing():
    images = {f"img{i}": _png(i) for i in range(3)}
    rows = _rows(images)
    cache = DecodedImageCache(max_bytes=10**6)
    cached, plain = _collator(cache), _collator()
    first = cached(rows)
    assert len(cache) == 3 and cache.misses == 3
    # The same images again, their stored bytes now broken: only a collator that does not decode them can answer.
    broken = [{**row, "image": {"bytes": b"\x89PNG broken", "path": None}} for row in rows]
    again = cached(broken)
    assert cache.hits == 3
    for key in first:
        assert torch.equal(first[key], again[key]), key
        assert torch.equal(first[key], plain(rows)[key]), key
    with pytest.raises(ImageLoadError, match="batch row 0"):
        plain(broken)


def test_images_past_the_budget_are_decoded_each_time():
    images = {f"img{i}": _png(i) for i in range(3)}
    cache = DecodedImageCache(max_bytes=40 * 30 * 3)  # room for one
    cached = _collator(cache)
    batch = cached(_rows(images))
    assert len(cache) == 1
    assert torch.equal(batch["pixel_values"], _collator()(_rows(images))["pixel_values"])
    again = cached(_rows(images))
    assert torch.equal(batch["pixel_values"], again["pixel_values"])
    assert (cache.hits, cache.misses) == (1, 5)


def test_collators_with_another_size_limit_do_not_share_an_entry():
    images = {"img0": _png(0, size=(64, 48))}
    cache = DecodedImageCache(max_bytes=10**6)
    full, capped = _collator(cache), _collator(cache, max_image_side=32)
    full(_rows(images))
    capped(_rows(images))
    assert sorted(size for _, size in cache._images) == [32, 2048]
    assert sorted(image.size for image in cache._images.values()) == [(32, 24), (64, 48)]


def test_augmented_batches_are_the_same_with_and_without_the_cache():
    images = {f"img{i}": _png(i) for i in range(4)}
    rows = _rows(images, questions_per_image=3)

    def augmented(cache):
        augmentation = FundusAugmentation(seed=7, process_index=0)
        return _collator(cache, augment=augmentation)

    cached, plain = augmented(DecodedImageCache(max_bytes=10**6)), augmented(None)
    for start in (0, 6, 0, 3):  # overlapping batches: each image reused, augmented anew each time
        batch = rows[start : start + 6]
        a, b = cached(batch), plain(batch)
        assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert cached.image_cache.hits > 0
    # The cache holds the decoded pixels, not an augmented version of them.
    stored = cached.image_cache.get(("img1", 2048))
    assert np.array_equal(np.asarray(stored), np.asarray(Image.open(io.BytesIO(images["img1"]["bytes"]))))


def test_prompt_collator_rows_of_one_image_decode_it_once():
    images = {f"img{i}": _png(i) for i in range(2)}
    rows = [
        {"input_ids": [9, 9, 2, 40], "answer_ids": [50, 3], "image": row["image"], "image_key": row["image_key"]}
        for row in _rows(images)
    ]
    cache = DecodedImageCache(max_bytes=10**6)

    def collator(cache):
        return PromptCollator(
            BlipImageProcessorPil(size={"height": 32, "width": 32}),
            num_query_tokens=2,
            image_token_id=9,
            pad_token_id=0,
            decoder_only=True,
            image_cache=cache,
        )

    batch = collator(cache)(rows)
    assert (cache.misses, cache.hits) == (2, 2)  # two rows per image: the second finds it
    assert torch.equal(batch["pixel_values"], collator(None)(rows)["pixel_values"])


class _BreaksAfterOneEpoch(torch.utils.data.Dataset):
    """Rows whose stored image bytes are broken from the second epoch on (counted in the process reading them)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.reads = rows, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        row = self.rows[i]
        if self.reads > len(self.rows):
            row = {**row, "image": {"bytes": b"\x89PNG broken", "path": None}}
        return row


def test_a_dataloader_worker_fills_its_own_copy():
    images = {f"img{i}": _png(i) for i in range(4)}
    rows = _rows(images, questions_per_image=3)
    cache = DecodedImageCache(max_bytes=10**6)
    # The second epoch's bytes are broken: it gives the right batches only if the worker kept the first epoch's.
    loader = torch.utils.data.DataLoader(
        _BreaksAfterOneEpoch(rows), batch_size=4, collate_fn=_collator(cache), num_workers=1, persistent_workers=True
    )
    plain = [_collator()(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    for _epoch in range(2):
        for batch, expected in zip(loader, plain, strict=True):
            assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert len(cache) == 0  # the training process's copy: the worker decoded


def test_the_flag_rejects_a_negative_budget(tmp_path):
    with pytest.raises(ValueError, match="--decoded_image_cache_gb must be >= 0"):
        DataTrainingArguments(dataset_dir=str(tmp_path), decoded_image_cache_gb=-1)
    assert DataTrainingArguments(dataset_dir=str(tmp_path)).decoded_image_cache_gb == 2.0


@pytest.mark.parametrize("workers, budget", [(0, 10**9), (2, 5 * 10**8)])
def test_the_runs_collators_share_one_cache_split_among_the_workers(tmp_path, tiny_processor, workers, budget):
    from retina_vqa.arguments import VqaTrainingArguments
    from retina_vqa.models.family import Family
    from retina_vqa.training.evaluation import build_collator, build_train_collator

    data_args = DataTrainingArguments(dataset_dir=str(tmp_path), decoded_image_cache_gb=1.0, augment=True)
    training_args = VqaTrainingArguments(
        output_dir=str(tmp_path / "out"), dataloader_num_workers=workers, use_cpu=True, report_to="none"
    )
    collator = build_collator(Family("blip"), tiny_processor, data_args, training_args, ranking=False)
    assert collator.image_cache.max_bytes == budget
    # Training batches (augmented) and evaluation batches take the same decoded images.
    assert build_train_collator(collator, data_args, training_args).image_cache is collator.image_cache
    off = DataTrainingArguments(dataset_dir=str(tmp_path), decoded_image_cache_gb=0)
    assert build_collator(Family("blip"), tiny_processor, off, training_args, ranking=False).image_cache is None
