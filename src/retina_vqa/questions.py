"""The RetinaVQA question and answer catalogue.

This module owns the text side of the dataset: every question type with its canonical wording,
paraphrases and answer type, the answer vocabularies (diagnosis, blindness, cause, modality, counts,
yes/no, eye), the lesion types a lesion box may carry, which lesions make each presence question answer
"yes", how haemorrhage quadrants are counted, ``answer_for`` (image metadata -> answer) and
``all_texts`` (every string, for the tokeniser vocabulary). The strings and question-type ids are the
contract the rest of the project (tokeniser vocabulary, metrics, baselines, visualisation) depends on.

Datasets built from grading labels alone (``retina_vqa.build_dataset``: APTOS, EyePACS, IDRiD, Messidor-2,
DDR) ask the subset of these questions that a grade answers, plus the types in ``GRADED_QUESTION_TYPES``
(referable diabetic retinopathy, macular oedema risk), in the order of ``LABEL_QUESTION_TYPES``;
``graded_answer_for`` answers them and ``graded_texts`` lists their strings. The synthetic generator
iterates ``QUESTION_TYPES`` only, so these additions leave its output unchanged.

Multi-disease datasets (the synthetic generator with ``--conditions`` beyond ``dr``) add the types of
``CONDITION_QUESTION_TYPES`` after these: presence and stage of each condition, the cup-to-disc ratio, the
diseases present (a set answer), the haemorrhage quadrants by name, and a findings report; ``FINDINGS``
names what a report can say, ``condition_answer_for`` answers the short questions and ``condition_texts``
lists their strings.

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
    "GRADED_QUESTION_TYPES",
    "HAEMORRHAGE_TYPES",
    "LABEL_QUESTION_TYPES",
    "LESION_TYPES",
    "MACULAR_OEDEMA_ANSWERS",
    "MODALITY_ANSWER",
    "PRESENCE_TYPES",
    "QUESTION_TYPES",
    "REFERABLE_DR_MIN_GRADE",
    "all_texts",
    "answer_for",
    "count_haemorrhage_quadrants",
    "graded_answer_for",
    "graded_question",
    "graded_texts",
    "haemorrhage_quadrant",
    "ALL_QUADRANTS_ANSWER",
    "AMD_FINDINGS",
    "AMD_STAGES",
    "CONDITION_NAMES",
    "CONDITION_QUESTION_TYPES",
    "FINDINGS",
    "GLAUCOMA_STAGES",
    "HYPERTENSIVE_GRADES",
    "NO_CONDITION_ANSWER",
    "NUMERIC_QUESTION_TYPES",
    "QUADRANTS",
    "REPORT_QUESTION_TYPE",
    "SET_QUESTION_TYPES",
    "VEIN_OCCLUSION_TYPES",
    "condition_answer_for",
    "condition_question",
    "condition_texts",
    "haemorrhage_location_answer",
    "join_answer_set",
    "split_answer_set",
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


# ---------------------------------------------------------------------------------------------------------------
# Questions a grading label answers (datasets built from APTOS, EyePACS, IDRiD, Messidor-2, DDR labels)
# ---------------------------------------------------------------------------------------------------------------

# Referable diabetic retinopathy: moderate NPDR or worse (ICDR grade >= 2), the screening programmes' threshold.
REFERABLE_DR_MIN_GRADE = 2

# Diabetic macular oedema risk, keyed by the scale the label file grades. IDRiD (after the original Messidor)
# grades 0-2 by the hard exudates' distance from the macula centre: "none" = no hard exudates, "low" = hard
# exudates farther than one disc diameter, "high" = within one disc diameter. Messidor-2's adjudicated_dme is
# binary: 1 = hard exudates within one disc diameter ("high"), 0 = not ("not_high": no or low risk, which its
# label cannot tell apart).
MACULAR_OEDEMA_ANSWERS: Mapping[str, str] = MappingProxyType(
    {"none": "no risk", "low": "low risk", "high": "high risk", "not_high": "no or low risk"}
)

# Question types that only datasets built from grading labels ask; kept apart from QUESTION_TYPES, which the
# synthetic generator iterates.
GRADED_QUESTION_TYPES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "referable_dr": _question_type(
            "is there referable diabetic retinopathy?",
            "closed",
            (
                "does this eye need referral for diabetic retinopathy?",
                "is the diabetic retinopathy referable?",
                "should this patient be referred for diabetic retinopathy?",
            ),
        ),
        "macular_oedema": _question_type(
            "what is the risk of diabetic macular oedema?",
            "closed",
            (
                "how high is the risk of macular oedema?",
                "what is the macular oedema risk?",
                "how likely is diabetic macular oedema?",
            ),
        ),
    }
)

# Every question type a grading label can answer, in row order. "laterality" is asked where the source names
# the eye, "macular_oedema" where it grades oedema, "quality" where it says which images are ungradable.
# Lesion questions are absent: grading labels say nothing about individual lesions.
LABEL_QUESTION_TYPES = (
    "modality",
    "abnormality",
    "diagnosis",
    "blindness",
    "cause",
    "laterality",
    "referable_dr",
    "macular_oedema",
    "quality",
)


def graded_question(question_type: str) -> Mapping[str, Any]:
    """Wording, paraphrases and answer type of one of ``LABEL_QUESTION_TYPES``."""
    if question_type in GRADED_QUESTION_TYPES:
        return GRADED_QUESTION_TYPES[question_type]
    if question_type in LABEL_QUESTION_TYPES:
        return QUESTION_TYPES[question_type]
    raise ValueError(f"unknown question type {question_type!r}; expected one of {list(LABEL_QUESTION_TYPES)}")


def graded_answer_for(
    question_type: str,
    grade: int | None,
    laterality: str | None = None,
    macular_oedema: str | None = None,
) -> str:
    """The answer to one of ``LABEL_QUESTION_TYPES`` for an image with these labels.

    ``grade`` is the ICDR grade (0-4), or None for an image the source calls ungradable (only "modality",
    "laterality" and "quality" have answers then); ``laterality`` "left" or "right"; ``macular_oedema`` a key
    of ``MACULAR_OEDEMA_ANSWERS``. The five notebook questions and laterality answer exactly as in the
    synthetic set (``answer_for``).
    """
    graded_question(question_type)  # unknown types raise here, naming the valid ones
    if question_type == "modality":
        return MODALITY_ANSWER
    if question_type == "quality":
        return "yes" if grade is not None else "no"
    if question_type == "laterality":
        if laterality not in ("left", "right"):
            raise ValueError(f"laterality must be 'left' or 'right' for the laterality question, got {laterality!r}")
        return answer_for("laterality", 0, laterality, "good", (), 0)
    if question_type == "macular_oedema":
        if macular_oedema not in MACULAR_OEDEMA_ANSWERS:
            raise ValueError(f"macular_oedema must be one of {list(MACULAR_OEDEMA_ANSWERS)}, got {macular_oedema!r}")
        return MACULAR_OEDEMA_ANSWERS[macular_oedema]
    if grade is None or not 0 <= grade < len(DIAGNOSIS_ANSWERS):
        raise ValueError(f"question type {question_type!r} needs an ICDR grade 0-4, got {grade!r}")
    if question_type == "referable_dr":
        return "yes" if grade >= REFERABLE_DR_MIN_GRADE else "no"
    return answer_for(question_type, grade, laterality or "", "good", (), 0)


def graded_texts(paraphrase: bool = True) -> list[str]:
    """Every question and answer string a dataset built from grading labels can hold."""
    texts: list[str] = []
    for question_type in LABEL_QUESTION_TYPES:
        info = graded_question(question_type)
        texts.extend(info["paraphrases"] if paraphrase else (info["question"],))
    texts.extend((MODALITY_ANSWER, "yes", "no", "left eye", "right eye"))
    texts.extend(DIAGNOSIS_ANSWERS)
    texts.extend(BLINDNESS_ANSWERS)
    texts.extend(CAUSE_ANSWERS)
    texts.extend(MACULAR_OEDEMA_ANSWERS.values())
    return list(dict.fromkeys(texts))


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


# ---------------------------------------------------------------------------------------------------------------
# Multi-disease questions (the synthetic generator with --conditions beyond dr)
# ---------------------------------------------------------------------------------------------------------------

# Condition id -> the name answers use ("what diseases are present?"), in the order answers list them.
CONDITION_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "dr": "diabetic retinopathy",
        "glaucoma": "glaucoma",
        "amd": "age-related macular degeneration",
        "hypertensive": "hypertensive retinopathy",
        "rvo": "retinal vein occlusion",
    }
)
# Stage answers; "none" when the eye does not have the condition. AREDS-like AMD stages, Keith-Wagener-Barker-like
# hypertensive grades, and the branch / central kinds of vein occlusion.
GLAUCOMA_STAGES = ("none", "early", "moderate", "advanced")
AMD_STAGES = ("none", "early", "intermediate", "late dry", "late wet")
HYPERTENSIVE_GRADES = ("none", "grade 1", "grade 2", "grade 3", "grade 4")
VEIN_OCCLUSION_TYPES = ("none", "branch", "central")
NO_CONDITION_ANSWER = "none"
# Quadrants in the order a location answer lists them (the names of ``haemorrhage_quadrant``).
QUADRANTS = ("superior-temporal", "superior-nasal", "inferior-temporal", "inferior-nasal")
ALL_QUADRANTS_ANSWER = "all four quadrants"

# The findings of age-related macular degeneration, in report order; all lie at the macula (the report's macula
# sentence lists them).
AMD_FINDINGS = (
    "small_drusen",
    "intermediate_drusen",
    "large_drusen",
    "pigment_changes",
    "geographic_atrophy",
    "choroidal_neovascularisation",
    "macular_haemorrhage",
)
# Every finding a synthetic findings report can name, in the order reports and metrics list them. The report
# wording is retina_vqa.synthetic.reports; the extractor that reads them back is retina_vqa.metrics.findings.
FINDINGS = (
    # diabetic retinopathy
    "microaneurysms",
    "haemorrhages",
    "hard_exudates",
    "cotton_wool_spots",
    "venous_beading",
    "neovascularisation",
    "preretinal_haemorrhage",
    # glaucoma
    "enlarged_cup",
    "rim_thinning",
    "disc_haemorrhage",
    # age-related macular degeneration
    *AMD_FINDINGS,
    # hypertensive retinopathy and vein occlusion
    "arteriolar_narrowing",
    "av_nicking",
    "flame_haemorrhages",
    "dilated_tortuous_veins",
    "disc_swelling",
)

# Question types of multi-disease datasets, in row order after QUESTION_TYPES; kept apart from QUESTION_TYPES so
# that DR-only datasets keep their rows. "<condition>_presence" asks whether the eye has it, "<condition>_stage"
# how far it has gone (DR's stage is the "diagnosis" question).
REPORT_QUESTION_TYPE = "findings_report"
CONDITION_QUESTION_TYPES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "dr_presence": _question_type(
            "is there diabetic retinopathy?",
            "closed",
            (
                "are there signs of diabetic retinopathy?",
                "does this eye show diabetic retinopathy?",
                "is diabetic retinopathy present?",
            ),
        ),
        "glaucoma_presence": _question_type(
            "are there signs of glaucoma?",
            "closed",
            (
                "is there glaucomatous optic neuropathy?",
                "does the optic disc look glaucomatous?",
                "is glaucoma present?",
            ),
        ),
        "glaucoma_stage": _question_type(
            "how advanced is the glaucoma?",
            "closed",
            (
                "what stage of glaucoma is shown?",
                "how severe is the glaucomatous damage?",
                "what is the glaucoma stage?",
            ),
        ),
        "cup_to_disc": _question_type(
            "what is the cup-to-disc ratio?",
            "closed",
            (
                "what is the vertical cup-to-disc ratio?",
                "how large is the cup relative to the disc?",
                "estimate the cup-to-disc ratio.",
            ),
        ),
        "amd_presence": _question_type(
            "is there age-related macular degeneration?",
            "closed",
            (
                "are there signs of macular degeneration?",
                "does this eye show age-related macular degeneration?",
                "is macular degeneration present?",
            ),
        ),
        "amd_stage": _question_type(
            "what stage of macular degeneration is shown?",
            "closed",
            (
                "how advanced is the macular degeneration?",
                "what is the stage of age-related macular degeneration?",
                "which stage of macular degeneration is this?",
            ),
        ),
        "hypertensive_presence": _question_type(
            "is there hypertensive retinopathy?",
            "closed",
            (
                "are there signs of hypertensive retinopathy?",
                "does this eye show damage from high blood pressure?",
                "is hypertensive retinopathy present?",
            ),
        ),
        "hypertensive_stage": _question_type(
            "what grade of hypertensive retinopathy is shown?",
            "closed",
            (
                "how severe is the hypertensive retinopathy?",
                "what is the hypertensive retinopathy grade?",
                "which grade of hypertensive retinopathy is this?",
            ),
        ),
        "rvo_presence": _question_type(
            "is there a retinal vein occlusion?",
            "closed",
            (
                "are there signs of a retinal vein occlusion?",
                "is a retinal vein blocked?",
                "does this eye show a vein occlusion?",
            ),
        ),
        "rvo_stage": _question_type(
            "which type of vein occlusion is present?",
            "closed",
            (
                "is the vein occlusion branch or central?",
                "what kind of retinal vein occlusion is this?",
                "which retinal vein occlusion type is shown?",
            ),
        ),
        "diseases": _question_type(
            "what diseases are present?",
            "closed",
            ("which conditions does this eye have?", "what eye diseases are visible?", "list the diseases shown."),
        ),
        "haemorrhage_location": _question_type(
            "which quadrant shows the haemorrhages?",
            "closed",
            (
                "where are the haemorrhages?",
                "which quadrants contain haemorrhages?",
                "in which quadrant are the haemorrhages?",
            ),
        ),
        REPORT_QUESTION_TYPE: _question_type(
            "describe the findings.",
            "open",
            (
                "write a findings report for this image.",
                "what are the findings?",
                "describe this fundus photograph.",
            ),
        ),
    }
)
# Question types whose answer is a set ("a, b and c"), scored order-free; and those with a number for an answer,
# scored by absolute error beside exact match.
SET_QUESTION_TYPES = ("diseases", "haemorrhage_location")
NUMERIC_QUESTION_TYPES = ("cup_to_disc",)

_STAGE_ANSWERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"glaucoma": GLAUCOMA_STAGES, "amd": AMD_STAGES, "hypertensive": HYPERTENSIVE_GRADES, "rvo": VEIN_OCCLUSION_TYPES}
)


def join_answer_set(items: Sequence[str]) -> str:
    """The set answer of ``items``: "a", "a and b", "a, b and c"; ``NO_CONDITION_ANSWER`` for none."""
    items = list(items)
    if not items:
        return NO_CONDITION_ANSWER
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def split_answer_set(answer: str) -> list[str]:
    """The items of a set answer written by ``join_answer_set`` (or with commas only), stripped and lowercased;
    an empty list for ``NO_CONDITION_ANSWER`` or an empty answer."""
    text = " ".join(str(answer).lower().replace(";", ",").split()).strip(" .")
    if text in ("", NO_CONDITION_ANSWER):
        return []
    parts = [p.strip() for chunk in text.split(",") for p in chunk.split(" and ")]
    return [p for p in parts if p]


def haemorrhage_location_answer(lesions: Iterable[Mapping[str, Any]], image_size: int, laterality: str) -> str:
    """The quadrants holding a haemorrhage box centre (``haemorrhage_quadrant``), as a set answer."""
    found = {
        haemorrhage_quadrant((b["x0"] + b["x1"]) / 2.0, (b["y0"] + b["y1"]) / 2.0, image_size, laterality)
        for b in lesions
        if b["type"] in HAEMORRHAGE_TYPES
    }
    if len(found) == len(QUADRANTS):
        return ALL_QUADRANTS_ANSWER
    return join_answer_set([q for q in QUADRANTS if q in found])


def condition_question(question_type: str) -> Mapping[str, Any]:
    """Wording, paraphrases and answer type of a question type of either catalogue."""
    if question_type in QUESTION_TYPES:
        return QUESTION_TYPES[question_type]
    if question_type in CONDITION_QUESTION_TYPES:
        return CONDITION_QUESTION_TYPES[question_type]
    raise ValueError(
        f"unknown question type {question_type!r}; expected one of {[*QUESTION_TYPES, *CONDITION_QUESTION_TYPES]}"
    )


def condition_answer_for(
    question_type: str,
    grade: int,
    laterality: str,
    lesions: Sequence[Mapping[str, Any]],
    image_size: int,
    stages: Mapping[str, str],
    cup_to_disc: float | None = None,
) -> str:
    """The answer to a type of ``CONDITION_QUESTION_TYPES`` other than the findings report.

    ``stages`` maps "glaucoma", "amd", "hypertensive" and "rvo" to a stage answer (missing ones are "none");
    ``cup_to_disc`` is the vertical cup-to-disc ratio, needed by the "cup_to_disc" question only.
    """
    if question_type == "dr_presence":
        return "yes" if grade > 0 else "no"
    condition, _, kind = question_type.rpartition("_")
    if condition in _STAGE_ANSWERS and kind in ("presence", "stage"):
        stage = stages.get(condition, NO_CONDITION_ANSWER)
        if stage not in _STAGE_ANSWERS[condition]:
            raise ValueError(f"{condition} stage must be one of {_STAGE_ANSWERS[condition]}, got {stage!r}")
        if kind == "stage":
            return stage
        return "no" if stage == NO_CONDITION_ANSWER else "yes"
    if question_type == "cup_to_disc":
        if cup_to_disc is None:
            raise ValueError("the cup_to_disc question needs the drawn cup-to-disc ratio (glaucoma in --conditions)")
        return f"{cup_to_disc:.1f}"
    if question_type == "diseases":
        present = ["dr"] if grade > 0 else []
        present += [c for c in _STAGE_ANSWERS if stages.get(c, NO_CONDITION_ANSWER) != NO_CONDITION_ANSWER]
        return join_answer_set([CONDITION_NAMES[c] for c in CONDITION_NAMES if c in present])
    if question_type == "haemorrhage_location":
        return haemorrhage_location_answer(lesions, image_size, laterality)
    if question_type == REPORT_QUESTION_TYPE:
        raise ValueError("findings reports are written by retina_vqa.synthetic.reports.write_report, not here")
    raise ValueError(f"unknown question type {question_type!r}; expected one of {list(CONDITION_QUESTION_TYPES)}")


def condition_texts(paraphrase: bool = True) -> list[str]:
    """Every question and short answer of ``CONDITION_QUESTION_TYPES`` (reports: ``synthetic.reports``)."""
    texts: list[str] = []
    for info in CONDITION_QUESTION_TYPES.values():
        texts.extend(info["paraphrases"] if paraphrase else (info["question"],))
    for stages in _STAGE_ANSWERS.values():
        texts.extend(stages)
    texts.extend(f"0.{i}" for i in range(1, 10))
    texts.extend(CONDITION_NAMES.values())
    texts.append(join_answer_set(list(CONDITION_NAMES.values())))
    texts.extend(QUADRANTS)
    texts.append(join_answer_set(list(QUADRANTS[:3])))
    texts.extend((ALL_QUADRANTS_ANSWER, "yes", "no"))
    return list(dict.fromkeys(texts))
