"""The RetinaVQA question and answer catalogue.

This module owns the text side of the dataset: every question type with its canonical wording,
paraphrases and answer type, the answer vocabularies (diagnosis, blindness, cause, modality, counts,
yes/no, eye), the lesion types a lesion box may carry, which lesions make each presence question answer
"yes", how haemorrhage quadrants are counted, ``answer_for`` (image metadata -> answer) and
``all_texts`` (every string, for the tokeniser vocabulary). The strings and question-type ids are the
contract the rest of the project (tokeniser vocabulary, metrics, baselines, visualisation) depends on.

It is shared by every dataset builder (the synthetic generator today, builders for real graded
datasets later), so it holds no drawing code and imports neither numpy nor Pillow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

__all__ = [
    "BLINDNESS_ANSWERS",
    "CAUSE_ANSWERS",
    "COUNT_WORDS",
    "DIAGNOSIS_ANSWERS",
    "HAEMORRHAGE_TYPES",
    "LESION_TYPES",
    "MODALITY_ANSWER",
    "PRESENCE_TYPES",
    "QUESTION_TYPES",
    "all_texts",
    "answer_for",
    "count_haemorrhage_quadrants",
    "haemorrhage_quadrant",
]

DIAGNOSIS_ANSWERS = ("healthy retina", "mild dr", "moderate dr", "severe dr", "proliferative dr")
MODALITY_ANSWER = "color fundus photography"
COUNT_WORDS = ("zero", "one", "two", "three", "four")

LESION_TYPES = (
    "microaneurysm",
    "haemorrhage",
    "hard_exudate",
    "cotton_wool_spot",
    "neovascularisation",
    "preretinal_haemorrhage",
)
# Lesion types that make the haemorrhage questions answer "yes" and count towards quadrants.
HAEMORRHAGE_TYPES = ("haemorrhage", "preretinal_haemorrhage")

BLINDNESS_ANSWERS = (
    "no",
    "yes",
    "yes, moderate diabetic retinopathy can threaten sight if the retinal damage progresses or the macula "
    "swells, so regular screening and good sugar control matter",
    "yes, severe diabetic retinopathy carries a high risk of progressing to proliferative disease within a "
    "year and needs prompt referral to an eye specialist",
    "yes, proliferative diabetic retinopathy is a leading cause of blindness because fragile new vessels can "
    "bleed into the eye or pull the retina away",
)
CAUSE_ANSWERS = (
    "none",
    "long-standing diabetes with high blood sugar that weakens the walls of the small retinal capillaries, "
    "which bulge outwards and form microaneurysms",
    "chronic high blood sugar and blood pressure damage the retinal capillaries so they leak blood and "
    "lipid, leaving haemorrhages and hard exudates in the retina",
    "widespread closure of retinal capillaries after years of poorly controlled diabetes starves the retina "
    "of oxygen, causing many haemorrhages and beading of the veins",
    "severe lack of oxygen in the retina from diabetic capillary closure drives the growth of abnormal new "
    "vessels that bleed easily and can scar the retina",
)


def _question_type(question: str, answer_type: str, paraphrases: Sequence[str]) -> Mapping[str, Any]:
    return MappingProxyType({"question": question, "answer_type": answer_type, "paraphrases": (question, *paraphrases)})


# Ordered: rows of one image follow this order. "paraphrases" starts with the canonical question.
QUESTION_TYPES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "modality": _question_type(
            "what kind of examination is this image?",
            "closed",
            ("what imaging modality was used?", "how was this image acquired?", "what type of scan is this?"),
        ),
        "abnormality": _question_type(
            "is there any abnormality?",
            "closed",
            (
                "does this retina look abnormal?",
                "is anything abnormal in this image?",
                "is this fundus abnormal?",
            ),
        ),
        "diagnosis": _question_type(
            "what is the diagnosis?",
            "closed",
            (
                "what is the most likely diagnosis?",
                "what grade of diabetic retinopathy is shown?",
                "how would you grade this retina?",
            ),
        ),
        "blindness": _question_type(
            "can this condition cause blindness?",
            "open",
            (
                "could this lead to loss of vision?",
                "is this condition a threat to sight?",
                "can this blind the patient?",
            ),
        ),
        "cause": _question_type(
            "what might be the cause of this condition?",
            "open",
            (
                "what causes these findings?",
                "why does this retina look like this?",
                "what is the likely cause?",
            ),
        ),
        "laterality": _question_type(
            "which eye is this?",
            "closed",
            (
                "is this the left or the right eye?",
                "which side is this eye?",
                "is this a left or right fundus?",
            ),
        ),
        "microaneurysms": _question_type(
            "are there microaneurysms?",
            "closed",
            (
                "are any microaneurysms visible?",
                "can you see microaneurysms?",
                "does the image show microaneurysms?",
            ),
        ),
        "haemorrhages": _question_type(
            "are there haemorrhages?",
            "closed",
            (
                "are any haemorrhages visible?",
                "is there retinal bleeding?",
                "does the image show haemorrhages?",
            ),
        ),
        "hard_exudates": _question_type(
            "are there hard exudates?",
            "closed",
            ("are any hard exudates visible?", "can you see hard exudates?", "does the image show exudates?"),
        ),
        "cotton_wool_spots": _question_type(
            "are there cotton wool spots?",
            "closed",
            (
                "are any cotton wool spots visible?",
                "can you see soft exudates?",
                "does the image show cotton wool spots?",
            ),
        ),
        "neovascularisation": _question_type(
            "is there neovascularisation?",
            "closed",
            (
                "are there new vessels?",
                "is neovascularisation visible?",
                "does the image show new vessel growth?",
            ),
        ),
        "haemorrhage_quadrants": _question_type(
            "how many quadrants show haemorrhages?",
            "closed",
            (
                "in how many quadrants are there haemorrhages?",
                "how many retinal quadrants contain haemorrhages?",
                "haemorrhages are present in how many quadrants?",
            ),
        ),
        "quality": _question_type(
            "is the image quality adequate for grading?",
            "closed",
            (
                "is this image gradable?",
                "is the image good enough to grade?",
                "is the photo quality sufficient?",
            ),
        ),
    }
)

# Lesion-presence question type -> lesion types that make its answer "yes".
PRESENCE_TYPES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "microaneurysms": ("microaneurysm",),
        "haemorrhages": HAEMORRHAGE_TYPES,
        "hard_exudates": ("hard_exudate",),
        "cotton_wool_spots": ("cotton_wool_spot",),
        "neovascularisation": ("neovascularisation",),
    }
)


def all_texts(paraphrase: bool = True) -> list[str]:
    """Every question and answer string the generator can produce (for building a tokeniser vocabulary)."""
    texts: list[str] = []
    for info in QUESTION_TYPES.values():
        texts.extend(info["paraphrases"] if paraphrase else (info["question"],))
    texts.extend(DIAGNOSIS_ANSWERS)
    texts.extend(BLINDNESS_ANSWERS)
    texts.extend(CAUSE_ANSWERS)
    texts.extend(COUNT_WORDS)
    texts.extend((MODALITY_ANSWER, "yes", "no", "left eye", "right eye"))
    return list(dict.fromkeys(texts))


def haemorrhage_quadrant(x: float, y: float, image_size: int, laterality: str) -> str:
    """Quadrant of a point, split by the vertical and horizontal lines through the image centre.

    Temporal is the side away from the optic disc: the left half of a right eye, the right half of a
    left eye (the disc sits on the right of a right-eye photograph).
    """
    # The image centre, not the field-of-view centre: the dataset card promises this split, and it
    # needs no knowledge of how (or whether) the field of view was drawn.
    cx = cy = image_size / 2.0
    vertical = "superior" if y < cy else "inferior"
    temporal_is_left = laterality == "right"
    horizontal = "temporal" if (x < cx) == temporal_is_left else "nasal"
    return f"{vertical}-{horizontal}"


def count_haemorrhage_quadrants(lesions: Iterable[Mapping[str, Any]], image_size: int, laterality: str) -> int:
    """Number of quadrants holding the centre of at least one haemorrhage box."""
    quadrants = {
        haemorrhage_quadrant((b["x0"] + b["x1"]) / 2.0, (b["y0"] + b["y1"]) / 2.0, image_size, laterality)
        for b in lesions
        if b["type"] in HAEMORRHAGE_TYPES
    }
    return len(quadrants)


def answer_for(
    question_type: str, grade: int, laterality: str, quality: str, lesions: Sequence[Mapping], image_size: int
) -> str:
    """The answer to ``question_type`` for an image with this metadata.

    ``grade`` is the ICDR grade (0-4), ``laterality`` "left" or "right", ``quality`` "good" for a gradable
    image, ``lesions`` boxes with ``type`` (one of ``LESION_TYPES``) and ``x0``, ``y0``, ``x1``, ``y1`` in
    pixels of an ``image_size`` square image.
    """
    if question_type == "modality":
        return MODALITY_ANSWER
    if question_type == "abnormality":
        return "yes" if grade > 0 else "no"
    if question_type == "diagnosis":
        return DIAGNOSIS_ANSWERS[grade]
    if question_type == "blindness":
        return BLINDNESS_ANSWERS[grade]
    if question_type == "cause":
        return CAUSE_ANSWERS[grade]
    if question_type == "laterality":
        return f"{laterality} eye"
    if question_type in PRESENCE_TYPES:
        kinds = PRESENCE_TYPES[question_type]
        return "yes" if any(b["type"] in kinds for b in lesions) else "no"
    if question_type == "haemorrhage_quadrants":
        return COUNT_WORDS[count_haemorrhage_quadrants(lesions, image_size, laterality)]
    if question_type == "quality":
        return "yes" if quality == "good" else "no"
    raise ValueError(f"unknown question type {question_type!r}; expected one of {list(QUESTION_TYPES)}")
