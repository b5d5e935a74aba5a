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
