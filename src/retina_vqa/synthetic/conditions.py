"""Which eye conditions the synthetic generator draws, their stages, prevalence and co-occurrence.

This module owns the ground truth of an eye before any pixel is drawn: the condition ids (``CONDITIONS``), the
``--conditions`` and ``--prevalence`` flags, and ``sample_conditions``, which decides per image which of the
other conditions are present and at which stage. Conditions are drawn independently, each with its own
prevalence, so they co-occur as often as chance makes them (a diabetic with glaucoma, hypertensive retinopathy
with a branch vein occlusion).

Diabetic retinopathy is always drawn, with its grade from ``--grade_weights`` as before; the others are:

==================  =====================================  =====================================================
condition           stages (the answers)                   signs drawn (:mod:`.signs`)
==================  =====================================  =====================================================
glaucoma            early, moderate, advanced              cup-to-disc ratio 0.6 / 0.7 / 0.8-0.9 (0.3-0.5 when
                                                           absent), rim thinning from moderate, a disc
                                                           haemorrhage in some eyes
amd                 early, intermediate, late dry,         small and intermediate drusen; large drusen and
                    late wet (AREDS-like)                  pigment changes; geographic atrophy; a choroidal
                                                           neovascular membrane with macular haemorrhage
hypertensive        grade 1-4 (Keith-Wagener-Barker-like)  arteriolar narrowing with a copper light reflex;
                                                           + silver reflex and AV nicking; + flame
                                                           haemorrhages, cotton-wool spots, some hard exudates;
                                                           + disc swelling
rvo                 branch, central                        flame haemorrhages in one temporal quadrant along a
                                                           dilated tortuous vein; in all four quadrants with
                                                           every vein dilated, sometimes a swollen disc
==================  =====================================  =====================================================

The stage strings are the answers of the stage questions (:mod:`retina_vqa.questions`). Every draw here comes
from a generator of its own (stream 2 of the image's key), never from the one that draws diabetic retinopathy,
so a DR-only dataset is byte-identical to what the generator made before these conditions existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..questions import AMD_STAGES, GLAUCOMA_STAGES, HYPERTENSIVE_GRADES, VEIN_OCCLUSION_TYPES

__all__ = [
    "CONDITIONS",
    "DEFAULT_PREVALENCE",
    "OTHER_CONDITIONS",
    "ConditionState",
    "parse_conditions",
    "parse_prevalence",
    "sample_conditions",
    "stages_of",
]

CONDITIONS = ("dr", "glaucoma", "amd", "hypertensive", "rvo")
# The conditions beside diabetic retinopathy, which is always drawn (its grade follows --grade_weights).
OTHER_CONDITIONS = CONDITIONS[1:]

# Share of images with each condition (any stage). High enough that a few hundred training images show every
# stage many times; real screening populations have far fewer.
DEFAULT_PREVALENCE: Mapping[str, float] = {"glaucoma": 0.3, "amd": 0.3, "hypertensive": 0.3, "rvo": 0.25}

# Cup-to-disc ratio (vertical, to one decimal) by glaucoma stage: healthy discs 0.3-0.5, then one step per stage.
CUP_TO_DISC = {"none": (0.3, 0.4, 0.5), "early": (0.6,), "moderate": (0.7,), "advanced": (0.8, 0.9)}
# A branch occlusion blocks one of the temporal arcade veins: its haemorrhages fill one temporal quadrant.
BRANCH_QUADRANTS = ("superior-temporal", "inferior-temporal")


def stages_of(condition: str) -> tuple[str, ...]:
    """The stages of a condition other than DR, without "none"."""
    table = {
        "glaucoma": GLAUCOMA_STAGES,
        "amd": AMD_STAGES,
        "hypertensive": HYPERTENSIVE_GRADES,
        "rvo": VEIN_OCCLUSION_TYPES,
    }
    if condition not in table:
        raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(OTHER_CONDITIONS)}")
    return tuple(s for s in table[condition] if s != "none")


@dataclass(frozen=True)
class ConditionState:
    """The conditions of one eye besides its DR grade: "none" or a stage for each, and their parameters.

    ``enabled`` lists the conditions the dataset draws (a condition not enabled is "none" and leaves no trace
    in the pixels). ``cup_to_disc`` is set when glaucoma is enabled: the drawn vertical cup-to-disc ratio.
    ``rvo_quadrant`` is the quadrant of a branch occlusion (``questions.haemorrhage_quadrant``'s names).
    """

    enabled: tuple[str, ...] = ("dr",)
    glaucoma: str = "none"
    cup_to_disc: float | None = None
    amd: str = "none"
    hypertensive: str = "none"
    rvo: str = "none"
    rvo_quadrant: str | None = None

    def stage(self, condition: str) -> str:
        """Stage of a condition other than DR ("none" when absent)."""
        if condition not in OTHER_CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(OTHER_CONDITIONS)}")
        return getattr(self, condition)

    def present(self) -> tuple[str, ...]:
        """The conditions other than DR that this eye has, in ``CONDITIONS`` order."""
        return tuple(c for c in OTHER_CONDITIONS if getattr(self, c) != "none")


def parse_conditions(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``--conditions``: "dr" (the default), "all", or a comma list such as "dr,glaucoma"; always includes "dr"."""
    if value is None:
        return ("dr",)
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [n for n in names if n]
    if names == ["all"]:
        return CONDITIONS
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        raise ValueError(
            f"--conditions has unknown or no conditions {unknown}; use 'all' or a comma list of {','.join(CONDITIONS)}"
        )
    # Diabetic retinopathy is always drawn (its grades follow --grade_weights; all-zero DR is 1,0,0,0,0).
    return tuple(c for c in CONDITIONS if c == "dr" or c in names)


def parse_prevalence(value: str | Mapping[str, float] | None, enabled: Sequence[str]) -> dict[str, float]:
    """``--prevalence``: "glaucoma=0.2,amd=0.4" (others keep ``DEFAULT_PREVALENCE``), for enabled conditions."""
    prevalence = {c: DEFAULT_PREVALENCE[c] for c in OTHER_CONDITIONS if c in enabled}
    if value is None:
        return prevalence
    if isinstance(value, str):
        items: dict[str, float] = {}
        for part in (p.strip() for p in value.split(",") if p.strip()):
            name, sep, number = part.partition("=")
            try:
                items[name.strip()] = float(number)
            except ValueError:
                raise ValueError(f"--prevalence must look like glaucoma=0.3,amd=0.2; could not read {part!r}") from None
            if not sep:
                raise ValueError(f"--prevalence must look like glaucoma=0.3,amd=0.2; could not read {part!r}")
    else:
        items = {str(k): float(v) for k, v in value.items()}
    for name, p in items.items():
        if name not in OTHER_CONDITIONS:
            raise ValueError(f"--prevalence names {name!r}; choose from {', '.join(OTHER_CONDITIONS)}")
        if name not in enabled:
            raise ValueError(f"--prevalence sets {name} but --conditions does not draw it; add it to --conditions")
        if not math.isfinite(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"--prevalence of {name} must be between 0 and 1, got {p}")
        prevalence[name] = p
    return prevalence


def sample_conditions(
    rng: np.random.Generator, enabled: Sequence[str], prevalence: Mapping[str, float]
) -> ConditionState:
    """Draw the conditions of one eye: each enabled one present with its prevalence, at a uniform stage.

    The draws happen in a fixed order whatever is enabled (every condition costs two draws), so enabling one
    more condition does not reshuffle the others of an image.
    """
    stages: dict[str, str] = {}
    for condition in OTHER_CONDITIONS:
        present_draw, stage_draw = rng.random(), rng.random()
        options = stages_of(condition)
        present = condition in enabled and present_draw < prevalence.get(condition, 0.0)
        stages[condition] = options[int(stage_draw * len(options))] if present else "none"
    cdr_draw, quadrant_draw = rng.random(), rng.random()
    cup_to_disc = None
    if "glaucoma" in enabled:
        choices = CUP_TO_DISC[stages["glaucoma"]]
        cup_to_disc = choices[int(cdr_draw * len(choices))]
    rvo_quadrant = BRANCH_QUADRANTS[int(quadrant_draw * 2)] if stages["rvo"] == "branch" else None
    return ConditionState(
        enabled=tuple(c for c in CONDITIONS if c == "dr" or c in enabled),
        cup_to_disc=cup_to_disc,
        rvo_quadrant=rvo_quadrant,
        **stages,
    )
