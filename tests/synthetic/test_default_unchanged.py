"""The DR-only default output is frozen: the multi-disease generator must not change a single byte of it.

The fingerprints were computed from the generator before the other conditions existed (the code of commit
HEAD at the time, ``git archive HEAD src``), with exactly the ``_table_digest`` below:

    _table_digest(generate_dataset(4, 2, 2, image_size=64, seed=0, num_workers=1))

and, for the paraphrased rows and a different grade mix and seed,

    _table_digest(generate_dataset(10, 4, 4, image_size=128, seed=3, paraphrase=True,
                                   grade_weights=(1, 2, 1, 1, 3), num_workers=1))

If one of these fails, the DR images or rows changed for the same seed and arguments, and the demo's numbers
no longer describe the data `make demo` makes.
"""

from __future__ import annotations

import hashlib

import datasets

from retina_vqa.synthetic import generate_dataset

SMALL_DEFAULT_SHA256 = "d268bc546d3d662c30714fa65263c96ca53c2e581f0093d53ca72f0ee707a338"
PARAPHRASED_SHA256 = "e1f2779104b858eb9a370a4fbca0a93384a965629a40ba2ed09b6ab23751928c"


def _table_digest(dd: datasets.DatasetDict) -> str:
    """sha256 over every split's Arrow columns (names and values, PNG bytes included), in order."""
    h = hashlib.sha256()
    for split in dd:
        table = dd[split].data.table
        for name in table.column_names:
            h.update(name.encode())
            h.update(repr(table.column(name).combine_chunks().to_pylist()).encode())
    return h.hexdigest()


def test_default_generation_is_byte_identical():
    assert _table_digest(generate_dataset(4, 2, 2, image_size=64, seed=0, num_workers=1)) == SMALL_DEFAULT_SHA256


def test_explicit_dr_only_conditions_are_the_default():
    dd = generate_dataset(4, 2, 2, image_size=64, seed=0, num_workers=1, conditions=["dr"])
    assert _table_digest(dd) == SMALL_DEFAULT_SHA256


def test_paraphrased_generation_is_byte_identical():
    dd = generate_dataset(
        10, 4, 4, image_size=128, seed=3, paraphrase=True, grade_weights=(1, 2, 1, 1, 3), num_workers=1
    )
    assert _table_digest(dd) == PARAPHRASED_SHA256
