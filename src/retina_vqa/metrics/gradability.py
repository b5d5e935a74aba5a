"""Gradability: which images are ungradable, which rows the grading metrics leave out for it, and the rates.

A screening programme reports an ungradable photograph (too blurred, dark, small a pupil, eyelashes in the way) as
its own outcome instead of grading it (IDx-DR's pivotal trial reported imageability as an endpoint). Here an image
is ungradable when the reference answer of its quality question (question type :data:`QUALITY_TYPE`, "is the image
quality adequate for grading?") is "no"; rows of one image share an image key (the prepared ``image_key`` column,
or any id that is the same for the rows of one image).

* `gradable_rows`: the rows the grading questions (:data:`GRADING_TYPES`: the DR grade, referable DR, any DR) are
  scored on, every row of an ungradable image's grading questions left out; None when the set has no quality
  question, so that nothing changes for it;
* `gradability_metrics`: how many rows and images were left out, the share of images whose reference says
  ungradable (``ungradable_rate``) and the share the model calls ungradable (``predicted_ungradable_rate``);
* :data:`UNGRADABLE_OUTCOME`: the screening outcome of an image the model calls ungradable, said instead of a grade
  or a referral (predict, the Python API, the app).

Rates are over the images that have a quality question; an image without one counts as gradable.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from .normalize import normalize_answer

__all__ = [
    "GRADING_TYPES",
    "QUALITY_TYPE",
    "UNGRADABLE_OUTCOME",
    "gradability_metrics",
    "gradable_rows",
    "predicted_ungradable_rate",
    "ungradable_images",
]

# The question type that says whether an image can be graded (`questions.QUESTION_TYPES`), and its "no".
QUALITY_TYPE = "quality"
NOT_ADEQUATE = "no"
# Question types whose answer is a DR grade or a screening call from it: the DR grade ("what is the diagnosis?"),
# referable DR (built datasets) and any DR (multi-disease datasets). An ungradable image has no honest answer to
# them, whatever its label says.
GRADING_TYPES = ("diagnosis", "referable_dr", "dr_presence")
UNGRADABLE_OUTCOME = "ungradable: re-image"


def _check(image_keys: Sequence[Hashable], question_types: Sequence[str | None], answers: Sequence[str]) -> None:
    if not len(image_keys) == len(question_types) == len(answers):
        raise ValueError(
            f"Got {len(answers)} answers, {len(image_keys)} image keys and {len(question_types)} question types: "
            "give one of each per row."
        )


def ungradable_images(
    image_keys: Sequence[Hashable], question_types: Sequence[str | None], answers: Sequence[str]
) -> set[Hashable]:
    """The images whose quality question is answered "no" in `answers` (references, or a model's predictions)."""
    _check(image_keys, question_types, answers)
    return {
        key
        for key, kind, answer in zip(image_keys, question_types, answers, strict=True)
        if kind == QUALITY_TYPE and normalize_answer(str(answer)) == NOT_ADEQUATE
    }


def gradable_rows(
    image_keys: Sequence[Hashable], question_types: Sequence[str | None], references: Sequence[str]
) -> list[bool] | None:
    """Per row, whether the grading metrics score it: False for a grading question (:data:`GRADING_TYPES`) of an
    image whose reference quality answer is "no", True for every other row. None without a quality question."""
    _check(image_keys, question_types, references)
    if QUALITY_TYPE not in question_types:
        return None
    ungradable = ungradable_images(image_keys, question_types, references)
    return [
        not (kind in GRADING_TYPES and key in ungradable) for key, kind in zip(image_keys, question_types, strict=True)
    ]


def gradability_metrics(
    image_keys: Sequence[Hashable],
    question_types: Sequence[str | None],
    references: Sequence[str],
    predictions: Sequence[str] | None = None,
) -> dict[str, float | int]:
    """The ungradable counts and rates of a set, empty without a quality question.

    Returns ``ungradable_images`` (images whose reference quality answer is "no"), ``ungradable_rows`` (their
    grading-question rows, left out of the grading metrics), ``ungradable_rate`` (share of the images with a quality
    question whose reference says not adequate) and, with `predictions`, ``predicted_ungradable_rate`` (share of
    those images the model answers "no").
    """
    keep = gradable_rows(image_keys, question_types, references)
    if keep is None:
        return {}
    assessed = {key for key, kind in zip(image_keys, question_types, strict=True) if kind == QUALITY_TYPE}
    ungradable = ungradable_images(image_keys, question_types, references)
    metrics: dict[str, float | int] = {
        "ungradable_images": len(ungradable),
        "ungradable_rows": keep.count(False),
        "ungradable_rate": len(ungradable) / len(assessed),
    }
    if predictions is not None:
        metrics["predicted_ungradable_rate"] = predicted_ungradable_rate(image_keys, question_types, predictions)
    return metrics


def predicted_ungradable_rate(
    image_keys: Sequence[Hashable], question_types: Sequence[str | None], predictions: Sequence[str]
) -> float | None:
    """The share of the images asked the quality question that the model answers "no" (no reference needed); None
    without a quality question."""
    assessed = {key for key, kind in zip(image_keys, question_types, strict=True) if kind == QUALITY_TYPE}
    if not assessed:
        return None
    return len(ungradable_images(image_keys, question_types, predictions)) / len(assessed)
