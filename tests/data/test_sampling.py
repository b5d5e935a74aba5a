import pytest

from retina_vqa.data.sampling import ImageGroupedSampler


def test_rows_of_an_image_come_together_and_every_row_once():
    keys = ["a", "b", "a", "c", "b", "a", "c"]
    sampler = ImageGroupedSampler(keys, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(len(keys))) and len(sampler) == len(keys)
    runs = [keys[i] for i in order]
    # Each key forms one contiguous run.
    changes = [k for i, k in enumerate(runs) if i == 0 or runs[i - 1] != k]
    assert sorted(changes) == ["a", "b", "c"]


def test_order_depends_on_seed_and_epoch_only():
    keys = [str(i // 3) for i in range(60)]
    first, again = ImageGroupedSampler(keys, seed=5), ImageGroupedSampler(keys, seed=5)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    assert list(ImageGroupedSampler(keys, seed=6)) != list(again)


def test_runs_of_an_image_are_bounded_and_spread_over_batches():
    keys = [str(i // 13) for i in range(13 * 40)]  # 40 images, 13 questions each
    spread = {}
    for bound in (1, 4, 13):
        sampler = ImageGroupedSampler(keys, seed=3, max_questions_per_image=bound)
        order = list(sampler)
        assert sorted(order) == list(range(len(keys)))
        batches = [order[i : i + 16] for i in range(0, len(order) - 15, 16)]
        spread[bound] = sum(len({keys[r] for r in batch}) for batch in batches) / len(batches)
    # A batch of 16 covers about 16 / bound images (two runs of one image may meet by chance).
    assert spread[1] > spread[4] > spread[13]
    assert spread[4] >= 0.85 * 16 / 4 and spread[13] <= 3
    unbounded = list(ImageGroupedSampler(keys, seed=3))
    assert unbounded == list(ImageGroupedSampler(keys, seed=3, max_questions_per_image=None))
    with pytest.raises(ValueError, match="max_questions_per_image"):
        ImageGroupedSampler(keys, max_questions_per_image=0)
