"""Train / validation / test assignment of the labelled images.

This module owns `assign_splits`. The publisher's split is kept where the source has one (DDR's
train/valid/test files, IDRiD's training and testing sets); a split the source lacks is carved out of its
training images. Sources without splits (APTOS, EyePACS, Messidor-2, CSV) are split here.

Carving is stratified by grade and grouped by patient: every image of one patient (both eyes of an EyePACS
``10_left`` / ``10_right`` pair, the rows sharing a ``--patient_column`` value, the images ``--patients``
gives one patient, both eyes of a Messidor-2 examination) lands in one split, so no person is seen in
training and scored in testing. An image without a patient id is its own group; where no image has one,
the split is grouped by image, which a warning and the dataset card say (a person's two eyes may then be
in different splits). Groups are shuffled by the seed, ordered by their highest grade, and handed one by
one to the split furthest below its share of the images so far: every grade is split in the requested
proportions (to within one group) and the totals too, and the same records and seed always give the same
splits, whatever order the label file lists them in. A source's own splits are kept as published: patients
they place in more than one split are counted in a note and a warning.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Sequence

from .records import LabelRecord

__all__ = ["SPLITS", "assign_splits", "check_fractions"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Raise ``ValueError`` naming the flag unless both fractions are in [0, 1) and leave training images."""
    for flag, value in (("--validation_fraction", validation_fraction), ("--test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{flag} must be at least 0 and below 1, got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"--validation_fraction {validation_fraction} + --test_fraction {test_fraction} leave no training "
            "images; their sum must be below 1"
        )


def _group_key(record: LabelRecord) -> str:
    return f"patient:{record.patient_id}" if record.patient_id else f"image:{record.image_id}"


def _carve(records: Sequence[LabelRecord], fractions: dict[str, float], seed: int) -> dict[str, list[LabelRecord]]:
    """Split ``records`` by patient group into ``fractions`` (split -> share, summing to 1), stratified."""
    groups: dict[str, list[LabelRecord]] = collections.defaultdict(list)
    for record in records:
        groups[_group_key(record)].append(record)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    # A patient's stratum is their worst eye (ungradable, -1, first); the sort is stable, so groups stay in
    # shuffled order within a stratum.
    keys.sort(key=lambda k: max(-1 if r.grade is None else r.grade for r in groups[k]))
    assigned: dict[str, list[LabelRecord]] = {split: [] for split in fractions}
    counts = dict.fromkeys(fractions, 0)
    total = 0
    for key in keys:
        members = groups[key]
        total += len(members)
        # The split furthest below its share of the images handed out so far (ties: the order of `fractions`).
        split = max(fractions, key=lambda s: fractions[s] * total - counts[s])
        counts[split] += len(members)
        assigned[split].extend(members)
    return assigned


def assign_splits(
    records: Sequence[LabelRecord], seed: int = 0, validation_fraction: float = 0.1, test_fraction: float = 0.2
) -> tuple[dict[str, list[LabelRecord]], list[str]]:
    """``{split: records}`` for train/validation/test (each sorted by image id) and one note per decision made,
    for the dataset card. Fractions are of the images being carved: all of them, or the source's training
    images when the source has its own test or validation split."""
    check_fractions(validation_fraction, test_fraction)
    kept = {split: [r for r in records if r.source_split == split] for split in ("validation", "test")}
    pool = [r for r in records if r.source_split not in ("validation", "test")]
    notes = []
    fractions = {"train": 1.0}
    for split, fraction in (("validation", validation_fraction), ("test", test_fraction)):
        if kept[split]:
            notes.append(f"{split}: the source's own {split} split ({len(kept[split])} images)")
        else:
            fractions[split] = fraction
            fractions["train"] -= fraction
    carved = _carve(pool, fractions, seed)
    carved_splits = [s for s in fractions if s != "train"]
    if carved_splits:
        shares = ", ".join(f"{s} {fractions[s]:g}" for s in carved_splits)
        origin = "the source's training images" if any(kept.values()) else "all images"
        notes.append(
            f"{' and '.join(carved_splits)} carved from {origin} ({shares}), stratified by grade, "
            f"{_grouping(pool)}, seed {seed}"
        )
    else:
        notes.append("train: the source's own training split")
    splits = {split: sorted(kept.get(split) or carved.get(split, []), key=lambda r: r.image_id) for split in SPLITS}
    splits_of: dict[str, set[str]] = collections.defaultdict(set)
    for split, members in splits.items():
        for record in members:
            if record.patient_id:
                splits_of[record.patient_id].add(split)
    across = sum(1 for found in splits_of.values() if len(found) > 1)
    if across:
        # Only the publisher's splits can do this: carving never parts a patient.
        who = "1 patient has" if across == 1 else f"{across} patients have"
        note = f"{who} images in more than one split, as the source's own splits place them"
        notes.append(note)
        logger.warning("%s (kept as published)", note)
    return splits, notes


def _grouping(pool: Sequence[LabelRecord]) -> str:
    """How the carved images were grouped, for the card; a warning unless every image has a patient id."""
    without = sum(1 for r in pool if not r.patient_id)
    if not without:
        return "grouped by patient"
    if without < len(pool):
        logger.warning(
            "%d of %d images have no patient id: each is split on its own, apart from its patient's other images",
            without,
            len(pool),
        )
        return f"grouped by patient ({without} of {len(pool)} images without a patient id: each its own group)"
    logger.warning(
        "Split grouped by image: the labels name no patients, so one patient's images (both eyes) may land in "
        "different splits. Give --patients FILE (columns image,patient_id; for Messidor-2 its examination pairs, "
        "--messidor2_pairs FILE) to keep each patient in one split."
    )
    return "grouped by image (the labels name no patients: one patient's images may be in different splits)"
