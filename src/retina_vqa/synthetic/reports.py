"""Findings reports: the answer of the "describe the findings" question, written from an eye's ground truth.

This module owns the report text. A report has two to six sentences in a fixed order: the optic disc (when the
dataset draws glaucoma, or the disc is swollen), the vessels, the retina, the macula (when the dataset draws
AMD), the negatives that matter for the stage (no new vessels in non-proliferative DR, no choroidal
neovascularisation in dry AMD, no disc swelling at hypertensive grade 3), the impression (every diagnosis with
its stage) and a recommendation ("refer within 3 months"), merged into the impression's sentence when a report
would otherwise run to seven. Each sentence and finding has two or three wordings, chosen by the generator
passed in, so the wording varies from eye to eye but every phrase comes from the tables here, and
:mod:`retina_vqa.metrics.findings` reads every one of them back (``tests/synthetic/test_reports.py`` checks that
on generated reports).

``report_texts`` lists every word a report can use, for tokeniser vocabularies.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Protocol

from ..questions import AMD_FINDINGS, FINDINGS, QUADRANTS

__all__ = [
    "FINDING_PHRASES",
    "RECOMMENDATIONS",
    "report_texts",
    "urgency",
    "write_report",
]


class _Chooser(Protocol):
    def integers(self, low: int, high: int) -> int: ...


# Finding -> the ways a report names it (as present). The first wording is the plain one.
FINDING_PHRASES: Mapping[str, tuple[str, ...]] = {
    "microaneurysms": ("microaneurysms", "scattered microaneurysms"),
    "haemorrhages": ("dot and blot haemorrhages", "intraretinal haemorrhages"),
    "hard_exudates": ("hard exudates", "hard exudates near the macula"),
    "cotton_wool_spots": ("cotton wool spots", "cotton-wool spots"),
    "venous_beading": ("venous beading", "beading of the veins"),
    "neovascularisation": ("new vessels", "neovascularisation"),
    "preretinal_haemorrhage": ("a preretinal haemorrhage", "preretinal haemorrhage"),
    "rim_thinning": ("thinning of the neuroretinal rim", "rim thinning"),
    "disc_haemorrhage": ("a disc haemorrhage", "a splinter haemorrhage at the disc margin"),
    "small_drusen": ("small drusen",),
    "intermediate_drusen": ("intermediate drusen",),
    "large_drusen": ("large drusen", "large soft drusen"),
    "pigment_changes": ("pigmentary changes", "pigment changes"),
    "geographic_atrophy": ("geographic atrophy", "an area of geographic atrophy"),
    "choroidal_neovascularisation": ("a choroidal neovascular membrane", "choroidal neovascularisation"),
    "macular_haemorrhage": ("macular haemorrhage", "subretinal haemorrhage"),
    "arteriolar_narrowing": ("generalised arteriolar narrowing", "narrowed arterioles"),
    "av_nicking": ("arteriovenous nicking", "av nicking"),
    "flame_haemorrhages": ("flame haemorrhages", "flame-shaped haemorrhages"),
    "dilated_tortuous_veins": ("dilated tortuous veins", "dilated and tortuous veins"),
    "disc_swelling": ("disc swelling", "swelling of the optic disc"),
}
# Ways a report says a finding is absent ("there is no evidence of ...").
NEGATED_PHRASES: Mapping[str, tuple[str, ...]] = {
    "neovascularisation": ("neovascularisation", "new vessels"),
    "choroidal_neovascularisation": ("choroidal neovascularisation",),
    "disc_swelling": ("disc swelling", "swelling of the optic disc"),
}
_NEGATION_SENTENCES = ("There is no {}.", "There is no evidence of {}.", "No {} is seen.")

_VESSELS = ("arteriolar_narrowing", "av_nicking", "dilated_tortuous_veins", "venous_beading")
_RETINA = (
    "microaneurysms",
    "haemorrhages",
    "flame_haemorrhages",
    "hard_exudates",
    "cotton_wool_spots",
    "neovascularisation",
    "preretinal_haemorrhage",
)
_MACULA = AMD_FINDINGS

_DR_IMPRESSIONS = (
    "no diabetic retinopathy",
    "mild non-proliferative diabetic retinopathy",
    "moderate non-proliferative diabetic retinopathy",
    "severe non-proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
)
_IMPRESSIONS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "glaucoma": {s: (f"{s} glaucomatous optic neuropathy", f"{s} glaucoma") for s in ("early", "moderate", "advanced")},
    "amd": {
        "early": ("early age-related macular degeneration",),
        "intermediate": ("intermediate age-related macular degeneration",),
        "late dry": ("late dry age-related macular degeneration", "atrophic age-related macular degeneration"),
        "late wet": ("late wet age-related macular degeneration", "neovascular age-related macular degeneration"),
    },
    "hypertensive": {f"grade {g}": (f"grade {g} hypertensive retinopathy",) for g in range(1, 5)},
    "rvo": {
        "branch": ("branch retinal vein occlusion",),
        "central": ("central retinal vein occlusion",),
    },
}
_NORMAL_IMPRESSIONS = ("Impression: normal fundus.", "Impression: no retinopathy.")
_IMPRESSION_SENTENCES = ("Impression: {}.", "These findings are consistent with {}.")

# How soon the eye should be seen, most urgent last; the wordings of each level.
RECOMMENDATIONS: tuple[tuple[str, ...], ...] = (
    ("routine screening in 12 months", "rescreen in 12 months"),
    ("refer within 3 months", "routine referral within 3 months"),
    ("refer within 4 weeks", "referral within 4 weeks"),
    ("refer within 2 weeks", "urgent referral within 2 weeks"),
    ("refer on the same day", "same-day emergency referral"),
)
# Urgency per stage, after screening practice: moderate DR within 3 months, proliferative within 2 weeks,
# wet AMD and central vein occlusion within 2 weeks, malignant (grade 4) hypertension the same day.
_URGENCY: Mapping[str, Mapping[str, int]] = {
    "dr": {"0": 0, "1": 0, "2": 1, "3": 2, "4": 3},
    "glaucoma": {"early": 1, "moderate": 1, "advanced": 2},
    "amd": {"early": 0, "intermediate": 1, "late dry": 1, "late wet": 3},
    "hypertensive": {"grade 1": 0, "grade 2": 1, "grade 3": 2, "grade 4": 4},
    "rvo": {"branch": 2, "central": 3},
}


def urgency(grade: int, stages: Mapping[str, str]) -> int:
    """Index into ``RECOMMENDATIONS``: the most urgent of the eye's conditions."""
    levels = [_URGENCY["dr"][str(grade)]]
    levels += [_URGENCY[c][s] for c, s in stages.items() if c in _URGENCY and s != "none"]
    return max(levels)


def _pick(rng: _Chooser, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))] if len(options) > 1 else options[0]


def _join(items: Sequence[str], conjunction: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conjunction} " + items[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _flame_location(stages: Mapping[str, str], rvo_quadrant: str | None) -> str:
    if stages.get("rvo") == "branch" and rvo_quadrant in QUADRANTS:
        return f" in the {rvo_quadrant} quadrant"
    if stages.get("rvo") == "central":
        return " in all four quadrants"
    return ""


def write_report(
    rng: _Chooser,
    grade: int,
    findings: Sequence[str],
    stages: Mapping[str, str],
    enabled: Sequence[str] = ("dr",),
    cup_to_disc: float | None = None,
    rvo_quadrant: str | None = None,
) -> str:
    """The findings report of one eye.

    ``findings`` are ids of ``questions.FINDINGS`` (what the image shows), ``stages`` the stage of each other
    condition ("none" when absent), ``enabled`` the conditions the dataset draws (a disc sentence needs glaucoma
    drawn, a macula sentence AMD), ``cup_to_disc`` the drawn ratio. ``rng`` (anything with numpy's
    ``integers``) picks the wordings: the same generator state gives the same report.
    """
    unknown = [f for f in findings if f not in FINDINGS]
    if unknown:
        raise ValueError(f"unknown findings {unknown}; expected ids of retina_vqa.questions.FINDINGS")
    present = set(findings)
    sentences: list[str] = []

    # Optic disc.
    if "glaucoma" in enabled and cup_to_disc is not None:
        extras = [_pick(rng, FINDING_PHRASES[f]) for f in ("rim_thinning", "disc_haemorrhage") if f in present]
        ratio = f"{cup_to_disc:.1f}"
        if "enlarged_cup" in present:
            text = _pick(
                rng,
                (
                    f"the optic disc shows an enlarged cup with a cup-to-disc ratio of {ratio}",
                    f"the cup is enlarged, with a cup-to-disc ratio of {ratio}",
                ),
            )
        elif "disc_swelling" in present:
            text = f"the optic disc is swollen with blurred margins, cup-to-disc ratio {ratio}"
        else:
            text = _pick(
                rng,
                (
                    f"the optic disc is healthy with a cup-to-disc ratio of {ratio}",
                    f"the disc looks healthy, cup-to-disc ratio {ratio}",
                ),
            )
        if extras:
            text += ", " + _join(extras)
        if "disc_swelling" in present and "enlarged_cup" in present:
            text += ", and the disc is swollen"
        sentences.append(_sentence(text) + ".")
    elif "disc_swelling" in present:
        sentences.append(_pick(rng, ("The optic disc is swollen with blurred margins.", "There is disc swelling.")))

    # Vessels.
    vessel_items = [_pick(rng, FINDING_PHRASES[f]) for f in _VESSELS if f in present]
    if vessel_items:
        text = _pick(rng, ("The vessels show {}.", "Vascular changes include {}."))
        sentences.append(text.format(_join(vessel_items)))

    # Retina.
    retina_items = []
    for f in _RETINA:
        if f in present:
            phrase = _pick(rng, FINDING_PHRASES[f])
            if f == "flame_haemorrhages":
                phrase += _flame_location(stages, rvo_quadrant)
            retina_items.append(phrase)
    if retina_items:
        text = _pick(rng, ("There are {}.", "The retina shows {}.", "Examination shows {}."))
        sentences.append(text.format(_join(retina_items)))
    else:
        sentences.append(
            _pick(rng, ("There are no haemorrhages, exudates or new vessels.", "No haemorrhages or exudates are seen."))
        )

    # Macula.
    macula_items = [_pick(rng, FINDING_PHRASES[f]) for f in _MACULA if f in present]
    if "small_drusen" in present and "intermediate_drusen" in present:
        # One phrase for the two sizes: "small and intermediate drusen".
        macula_items = ["small and intermediate drusen", *macula_items[2:]]
    if macula_items:
        text = _pick(rng, ("The macula shows {}.", "At the macula there are {}."))
        sentences.append(text.format(_join(macula_items)))
    elif "amd" in enabled:
        sentences.append(_pick(rng, ("The macula is normal.", "The macula looks healthy.")))

    # Negatives that matter for the stage.
    negatives = []
    if 2 <= grade <= 3 and "neovascularisation" not in present:
        negatives.append("neovascularisation")
    if stages.get("amd") in ("intermediate", "late dry"):
        negatives.append("choroidal_neovascularisation")
    if stages.get("hypertensive") == "grade 3" and "disc_swelling" not in present:
        negatives.append("disc_swelling")
    if negatives:
        items = [_pick(rng, NEGATED_PHRASES[f]) for f in negatives]
        sentences.append(_pick(rng, _NEGATION_SENTENCES).format(_join(items, "or")))

    # Impression and recommendation.
    diagnoses = [_DR_IMPRESSIONS[grade]] if grade > 0 else []
    for condition in ("glaucoma", "amd", "hypertensive", "rvo"):
        stage = stages.get(condition, "none")
        if stage != "none":
            diagnoses.append(_pick(rng, _IMPRESSIONS[condition][stage]))
    if diagnoses:
        impression = _pick(rng, _IMPRESSION_SENTENCES).format(_join(diagnoses))
    elif enabled == ("dr",) or list(enabled) == ["dr"]:
        impression = "Impression: no diabetic retinopathy."
    else:
        impression = _pick(rng, _NORMAL_IMPRESSIONS)
    recommendation = _pick(rng, RECOMMENDATIONS[urgency(grade, stages)])
    if len(sentences) + 2 > 6:
        sentences.append(impression[:-1] + "; " + recommendation + ".")
    else:
        sentences += [impression, _sentence(recommendation) + "."]
    return " ".join(sentences)


def report_texts() -> list[str]:
    """Sentences that together hold every word and punctuation mark a report can contain."""
    texts = [p for phrases in FINDING_PHRASES.values() for p in phrases]
    texts += [p for phrases in NEGATED_PHRASES.values() for p in phrases]
    texts += list(_NEGATION_SENTENCES) + list(_NORMAL_IMPRESSIONS) + list(_IMPRESSION_SENTENCES)
    texts += list(_DR_IMPRESSIONS) + [p for stages in _IMPRESSIONS.values() for ps in stages.values() for p in ps]
    texts += [p for level in RECOMMENDATIONS for p in level]
    texts += [
        "The optic disc shows an enlarged cup with a cup-to-disc ratio of 0.7, and the disc is swollen.",
        "The cup is enlarged, with a cup-to-disc ratio of 0.9. The disc looks healthy, cup-to-disc ratio 0.3.",
        "The optic disc is healthy with a cup-to-disc ratio of 0.5. The optic disc is swollen with blurred margins.",
        "There is disc swelling. Vascular changes include venous beading. The vessels show venous beading.",
        "The optic disc is swollen with blurred margins, cup-to-disc ratio 0.4.",
        "There are microaneurysms. The retina shows microaneurysms. Examination shows microaneurysms.",
        "There are no haemorrhages, exudates or new vessels. No haemorrhages or exudates are seen.",
        "The macula shows large drusen. At the macula there are small and intermediate drusen.",
        "The macula is normal. The macula looks healthy. Impression: no diabetic retinopathy.",
        "Flame haemorrhages in all four quadrants; refer within 3 months.",
        *(f"flame haemorrhages in the {q} quadrant" for q in QUADRANTS),
        *(f"{d / 10:.1f}" for d in range(1, 10)),
    ]
    return list(dict.fromkeys(itertools.chain(texts)))
