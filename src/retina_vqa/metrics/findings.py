"""Scoring of the multi-disease answers: findings reports by their findings, set answers as sets, numbers by error.

A findings report is scored the way clinical-efficacy metrics score radiology reports: a rule-based extractor
reads, from the generated and from the reference report, which findings (``questions.FINDINGS``) are stated as
present, negated ("no haemorrhages", "there is no evidence of disc swelling", "new vessels are not seen") or
uncertain ("possible venous beading", "neovascularisation cannot be excluded"), the impression (DR grade and
every other diagnosis with its stage) and the recommendation (how soon to refer). Negation and hedging cues read
NegEx-style, forward or back within their clause (see ``_CUES``). :func:`report_metrics` then gives per-finding
precision / recall / F1 with their micro and macro averages, hedged findings counted apart, impression and
recommendation agreement, next to ROUGE-L and BLEU, which reward fluent text even when it names the wrong
findings.

The extractor reads every wording of :mod:`retina_vqa.synthetic.reports` and common variants (American
spellings, abbreviations such as "AV nicking", "CNV", "NPDR"); it works on raw or tokenizer-decoded text
("cup - to - disc", "0. 7"). A finding that is named without a qualifier it needs ("drusen" with no size) is
not counted.

Also here: order-free scoring of set answers ("what diseases are present?": precision / recall / F1 per row and
exact set match) and the absolute error of numeric answers (the cup-to-disc ratio). :func:`multidisease_metrics`
gathers all of it for the rows of a VQA evaluation (``vqa.compute_vqa_metrics`` calls it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..questions import (
    FINDINGS,
    NUMERIC_QUESTION_TYPES,
    QUADRANTS,
    REPORT_QUESTION_TYPE,
    SET_QUESTION_TYPES,
    split_answer_set,
)
from .normalize import normalize_answer
from .scores import corpus_bleu, rouge_l

__all__ = [
    "PRIOR_REPORTED_KEYS",
    "ReportFindings",
    "extract_findings",
    "multidisease_metrics",
    "numeric_metrics",
    "parse_number",
    "report_metrics",
    "set_metrics",
]

# Keys of the question-prior baseline worth reporting next to the model (training/outputs.PRIOR_KEYS).
PRIOR_REPORTED_KEYS = (
    "report_finding_micro_f1",
    "report_finding_micro_precision",
    "report_finding_micro_recall",
    "report_finding_macro_f1",
    "report_finding_uncertain_rate",
    "report_impression_dr_grade_accuracy",
    "report_impression_diagnosis_f1",
    "report_impression_exact_match",
    "report_recommendation_accuracy",
    "report_rouge_l",
    "report_bleu",
    "diseases_set_f1",
    "diseases_set_exact_match",
    "haemorrhage_location_set_f1",
    "cup_to_disc_mean_absolute_error",
    "cup_to_disc_accuracy",
)

# --------------------------------------------------------------------------------------------------------------
# Finding patterns
# --------------------------------------------------------------------------------------------------------------

_H = r"(?:haemorrhage|hemorrhage|bleed)s?"
# Most specific first: a matched span is blanked before the next pattern runs, so "flame haemorrhages" is not
# also read as "haemorrhages" and "choroidal neovascularisation" not as "neovascularisation".
_FINDING_PATTERNS: tuple[tuple[str, str], ...] = (
    ("preretinal_haemorrhage", rf"\b(?:pre ?retinal|subhyaloid|vitreous) {_H}"),
    ("disc_haemorrhage", rf"\b(?:optic )?disc {_H}|\bsplinter {_H} (?:at|on) the (?:optic )?disc(?: margin)?"),
    ("macular_haemorrhage", rf"\b(?:macular|sub ?retinal) {_H}|\b{_H} (?:at|in) the macula"),
    ("flame_haemorrhages", rf"\bflame(?: shaped)? {_H}|\bsplinter {_H}"),
    ("haemorrhages", rf"\b(?:(?:dot and blot|dot blot|blot|dot|intra ?retinal|retinal|scattered) )?{_H}"),
    ("microaneurysms", r"\bmicro ?aneurysms?\b"),
    ("cotton_wool_spots", r"\bcotton ?wool (?:spots?|patch(?:es)?)|\bsoft exudates?\b|\bcws\b"),
    ("hard_exudates", r"\b(?:hard |lipid )?exudates?\b|\bmacular star\b"),
    ("venous_beading", r"\bvenous beading\b|\bbeading of the veins\b|\bbeaded veins\b"),
    (
        "choroidal_neovascularisation",
        r"\bchoroidal neovasculari[sz]ation\b|\b(?:choroidal )?neovascular membrane\b|\bcnv\b",
    ),
    ("neovascularisation", r"\bneovasculari[sz]ation\b(?: (?:of|at) the (?:optic )?disc)?|\bnew vessels?\b|\bnv[de]\b"),
    (
        "enlarged_cup",
        r"\benlarged (?:optic )?cup\b|\bcup is enlarged\b|\b(?:glaucomatous )?cupping\b|\blarge cup\b",
    ),
    (
        "rim_thinning",
        r"\bthinning of the (?:neuro ?retinal )?rim\b|\b(?:neuro ?retinal )?rim thinning\b|\bthin(?:ned)? "
        r"(?:neuro ?retinal )?rim\b|\brim notch(?:ing)?\b|\bnotch(?:ing)? of the rim\b",
    ),
    ("pigment_changes", r"\bpigment(?:ary)? changes?\b|\b(?:hyper|hypo)pigmentation\b|\bpigment clump(?:ing|s)?\b"),
    ("geographic_atrophy", r"\bgeographic atrophy\b|\bga\b"),
    (
        "arteriolar_narrowing",
        r"\barteriolar (?:narrowing|attenuation)\b|\bnarrow(?:ed|ing of the)? arterioles?\b|\battenuated arterioles\b",
    ),
    ("av_nicking", r"\b(?:arterio ?venous|a ?v) ni(?:ck|pp)ing\b"),
    (
        "dilated_tortuous_veins",
        r"\bdilated(?: and)? tortuous veins?\b|\btortuous(?: and dilated)? veins?\b|\bveins are dilated and "
        r"tortuous\b|\bvenous dilat(?:at)?ion and tortuosity\b",
    ),
    (
        "disc_swelling",
        r"\b(?:optic )?disc (?:swelling|o?edema)\b|\bswollen (?:optic )?disc\b|\bswelling of the (?:optic )?disc\b"
        r"|\bdisc is (?:not )?swollen\b|\bpapill(?:o)?o?edema\b",
    ),
)
_FINDING_RES = tuple((name, re.compile(pattern)) for name, pattern in _FINDING_PATTERNS)
# Sizes of drusen: "small and intermediate drusen", "large soft drusen", "medium-sized drusen".
_DRUSEN_RE = re.compile(
    r"\b((?:(?:small|intermediate|medium(?: sized)?|large|soft|hard|confluent)(?:,| and| or)? ?)+) ?drusen\b"
)
_DRUSEN_SIZES = (("small", "small_drusen"), ("hard", "small_drusen"), ("intermediate", "intermediate_drusen"),
                 ("medium", "intermediate_drusen"), ("large", "large_drusen"), ("soft", "large_drusen"),
                 ("confluent", "large_drusen"))  # fmt: skip
# The ratio itself: "cup-to-disc ratio of 0.7", "c/d 0.8", "cup to disc ratio is 0.6".
_RATIO_RE = re.compile(r"\b(?:cup to disc|c d|cdr)(?: ratio)?(?: of| is| was|:)? ?(\d(?:\.\d+)?)")
# A vertical cup-to-disc ratio from this value up is read as an enlarged cup (the generator draws 0.6 and up for
# glaucoma, 0.3-0.5 for healthy discs).
ENLARGED_CUP_RATIO = 0.6

# Negation and hedging, after NegEx (Chapman et al. 2001): a cue is a pre-cue ("no haemorrhages"), a post-cue
# ("haemorrhages are not seen") or reads both ways ("possible new vessels", "new vessels are possible"). Its
# scope runs from the cue, in the direction it reads, to the end of its clause (see _segments). The lists are
# matched in the order of _CUES and each match is blanked, so "cannot be excluded" is not also read as
# "excluded", and a pseudo-negation ("no increase in", "not only") negates nothing.
_PSEUDO_NEGATION = (
    r"\bno (?:significant |interval |further )?(?:increase|change|progression|worsening)(?: in| of)?\b"
    r"|\bnot only\b|\bnot necessarily\b|\bwithout (?:any )?(?:change|difficulty)\b"
)
_UNCERTAIN_POST = (
    r"\b(?:cannot|can not|can't|could not|couldn't|may not)(?: be)? (?:excluded|ruled out)\b"
    r"|\bnot (?:be )?(?:excluded|ruled out)\b"
)
_UNCERTAIN_PRE = (
    r"\b(?:cannot|can not|can't|could not) (?:exclude|rule out)\b|\b(?:to )?rule out\b"
    r"|\bsuspicio(?:us|n) (?:for|of)\b|\bsuggestive of\b|\bsuggest(?:s|ing)\b|\b(?:concerning|worrisome) for\b"
    r"|\b(?:may|might|could) (?:represent|indicate)\b|\b(?:not certain|uncertain) (?:if|whether)\b"
)
_UNCERTAIN_BOTH = (
    r"\b(?:possible|possibly|probable|probably|suspected|likely|unlikely|presumed|questionable|equivocal|query)\b"
    r"|\b(?:may|might|could) be\b"
)
_NEGATION_POST = (
    r"\babsent\b|\bnot (?:seen|present|identified|detected|visible|noted|observed|evident|found|appreciated)\b"
    r"|\bruled out\b|\bexcluded\b"
)
_NEGATION_PRE = (
    r"\bno (?:evidence|signs?|features?|suggestion) of\b|\babsence of\b|\bfree of\b|\bnegative for\b|\bwithout\b"
    r"|\brules out\b|\bneither\b|\bnor\b|\bno\b|\bnot\b"
)
# (state, direction, pattern), matched in this order.
_CUES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (state, direction, re.compile(pattern))
    for state, direction, pattern in (
        ("pseudo", "", _PSEUDO_NEGATION),
        ("uncertain", "post", _UNCERTAIN_POST),
        ("uncertain", "pre", _UNCERTAIN_PRE),
        ("uncertain", "both", _UNCERTAIN_BOTH),
        ("negated", "post", _NEGATION_POST),
        ("negated", "pre", _NEGATION_PRE),
    )
)
# A clause ends at a semicolon, a colon or a contrast ("but"). A comma ends one too, except inside a list: "no
# haemorrhages, exudates or new vessels" (a negated list closes with "or"/"nor") and "haemorrhages, exudates and
# new vessels are not seen" (a subject list closes with a conjunction before the post-cue). "And"/"or" between
# two parts that each have a verb ("microaneurysms are present and new vessels are not seen") ends one as well.
_CLAUSE_BREAK = re.compile(r"\b(?:but|however|although|though|whereas|while|except)\b|[;:]")
_VERB = re.compile(
    r"\b(?:is|are|was|were|be|been|shows?|showing|has|have|seen|noted|present|appears?|includes?|identified"
    r"|detected|visible|observed)\b"
)
_CONJUNCTION = re.compile(r"\b(?:and|or)\b")
_LIST_CLOSE = re.compile(r"\b(?:or|nor)\b")
_LIST_JOIN = re.compile(r"\b(?:and|or|nor)\b")

# --------------------------------------------------------------------------------------------------------------
# Impression and recommendation patterns
# --------------------------------------------------------------------------------------------------------------

# "No diabetic retinopathy" is a negation cue before a mention, read like any other.
_DR_RE = re.compile(
    r"\b(?:(mild|moderate|severe) )?(non ?proliferative|proliferative) diabetic retinopathy\b"
    r"|\b(mild|moderate|severe) npdr\b|\b(pdr)\b|\b(?:(mild|moderate|severe) )?diabetic retinopathy\b"
)
_DR_LEVELS = {"mild": 1, "moderate": 2, "severe": 3}
_GLAUCOMA_RE = re.compile(r"\b(?:(early|mild|moderate|advanced|severe) )?glaucoma(?:tous optic neuropathy)?\b")
_GLAUCOMA_STAGES = {"early": "early", "mild": "early", "moderate": "moderate", "advanced": "advanced",
                    "severe": "advanced", None: "early"}  # fmt: skip
_AMD_RE = re.compile(
    r"\b(?:(early|intermediate|late dry|late wet|dry|wet|neovascular|atrophic) )?(?:age related )?"
    r"macular degeneration\b|\b(?:(early|intermediate|late dry|late wet|dry|wet|neovascular|atrophic) )?amd\b"
)
_AMD_STAGES = {"early": "early", "intermediate": "intermediate", "late dry": "late dry", "dry": "late dry",
               "atrophic": "late dry", "late wet": "late wet", "wet": "late wet", "neovascular": "late wet",
               None: "early"}  # fmt: skip
_HYPERTENSIVE_RE = re.compile(r"\b(?:grade ([1-4]|one|two|three|four) )?hypertensive retinopathy\b")
_GRADE_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4"}
_RVO_RE = re.compile(r"\b(branch|central|hemi) retinal vein occlusion\b|\b(brvo|crvo)\b|\bretinal vein occlusion\b")
_RECOMMENDATION_RES = (
    (4, re.compile(r"\bsame ?day\b|\bemergency\b|\bimmediately\b")),
    (3, re.compile(r"\b(?:2|two) weeks\b|\burgent(?:ly)?\b")),
    (2, re.compile(r"\b(?:4|four) weeks\b|\b(?:1|one) month\b")),
    (1, re.compile(r"\b(?:3|three) months\b")),
    (0, re.compile(r"\b(?:12|twelve) months\b|\b(?:1|one) year\b|\bannual(?:ly)?\b|\broutine screening\b")),
)


@dataclass
class ReportFindings:
    """What one report states: findings present, negated and hedged, the impression and the recommendation.

    A finding is in one of ``present``, ``uncertain`` (hedged: "possible venous beading", "neovascularisation
    cannot be excluded") and ``negated``; stated more than one way in a report, present wins over uncertain and
    uncertain over negated. ``dr_grade`` is 0-4 (0 when the report names no diabetic retinopathy), ``diagnoses``
    maps each other condition it names ("glaucoma", "amd", "hypertensive", "rvo") to a stage,
    ``uncertain_diagnoses`` holds the conditions it only hedges on ("dr" among them; neither graded nor staged),
    ``urgency`` indexes ``synthetic.reports.RECOMMENDATIONS`` (None when the report recommends nothing).
    """

    present: set[str] = field(default_factory=set)
    negated: set[str] = field(default_factory=set)
    dr_grade: int = 0
    diagnoses: dict[str, str] = field(default_factory=dict)
    urgency: int | None = None
    cup_to_disc: float | None = None
    uncertain: set[str] = field(default_factory=set)
    uncertain_diagnoses: set[str] = field(default_factory=set)


def _clean(text: str) -> str:
    text = str(text).lower()
    # Tokenizer-decoded text spaces out punctuation: "0. 7" -> "0.7", "cup - to - disc" -> "cup to disc".
    text = re.sub(r"(\d)\s*\.\s+(\d)", r"\1.\2", text)
    text = re.sub(r"[-/]", " ", text).replace("(", " ").replace(")", " ")
    text = re.sub(r"\s*,\s*", ", ", text)
    return " ".join(text.split())


def _sentences(text: str) -> list[str]:
    # A period ends a sentence unless it sits between digits ("0.7").
    return [s.strip() for s in re.split(r"(?<!\d)\.|\.(?!\d)|[!?\n]", text) if s.strip()]


def _clauses(sentence: str) -> list[str]:
    parts, start = [], 0
    for m in _CLAUSE_BREAK.finditer(sentence):
        parts.append(sentence[start : m.start()])
        start = m.end()
    parts.append(sentence[start:])
    return [p for p in parts if p.strip()]


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


@dataclass
class _Cue:
    state: str  # "negated" or "uncertain"
    direction: str  # "pre", "post" or "both"
    start: int
    end: int


def _segments(clause: str, targets: Sequence[tuple[int, int]]) -> list[tuple[int, int, bool]]:
    """(start, end, follows_comma) of the parts of a clause, split at commas and at an "and"/"or" between two parts
    that each have a verb; a conjunction inside a finding ("dot and blot haemorrhages") splits nothing."""
    out, start = [], 0
    for n, piece in enumerate(clause.split(",")):
        end = start + len(piece)
        cut, after_comma = start, n > 0
        for m in _CONJUNCTION.finditer(clause, start, end):
            inside = any(s <= m.start() < e for s, e in targets)
            if not inside and _VERB.search(clause, cut, m.start()) and _VERB.search(clause, m.end(), end):
                out.append((cut, m.start(), after_comma))
                cut, after_comma = m.end(), False
        out.append((cut, end, after_comma))
        start = end + 1
    return out


def _scope(
    cue: _Cue, forward: bool, clause: str, segments: Sequence[tuple[int, int, bool]], cues: Sequence[_Cue]
) -> tuple[int, int]:
    """The span a cue reaches in one direction: to the end (or start) of its part of the clause, or across the
    items of a list it heads or closes (see _CLAUSE_BREAK)."""
    i = next(k for k, (s, e, _) in enumerate(segments) if s <= cue.start < e)

    def bare(k: int) -> bool:  # no verb and no cue: a list item
        s, e, _ = segments[k]
        return not _VERB.search(clause, s, e) and not any(s <= c.start < e for c in cues)

    if forward:
        end = segments[i][1]
        for k in range(i + 1, len(segments)):
            s, e, after_comma = segments[k]
            if not after_comma or any(s <= c.start < e for c in cues):
                break
            if _LIST_CLOSE.search(clause, s, e):  # "no haemorrhages, exudates or new vessels (are seen)"
                end = e
                break
            if not bare(k):
                break
        return cue.end, end
    start = segments[i][0]
    if _LIST_JOIN.search(clause, start, cue.start):  # "haemorrhages, exudates and new vessels are not seen"
        for k in range(i, 0, -1):
            if not segments[k][2] or not bare(k - 1):
                break
            start = segments[k - 1][0]
    return start, cue.start


def _states(clause: str, targets: Sequence[tuple[int, int]]) -> list[str]:
    """For each (start, end) span of a finding or diagnosis in the clause: "present", "negated" or "uncertain",
    after the nearest cue whose scope holds it."""
    masked = clause
    for s, e in targets:
        masked = _blank(masked, s, e)
    cues: list[_Cue] = []
    for state, direction, pattern in _CUES:
        for m in list(pattern.finditer(masked)):
            masked = _blank(masked, m.start(), m.end())
            if state != "pseudo":
                cues.append(_Cue(state, direction, m.start(), m.end()))
    segments = _segments(clause, targets)
    scopes: list[tuple[_Cue, bool, int, int]] = []
    for cue in cues:
        if cue.direction != "post":
            s, e = _scope(cue, True, clause, segments, cues)
            # A cue that reads both ways reads forward when a finding follows it: "hard exudates and possible new
            # vessels" hedges the new vessels only; "new vessels are possible" reads back.
            if cue.direction == "pre" or any(s <= ts and te <= e for ts, te in targets):
                scopes.append((cue, True, s, e))
                continue
        scopes.append((cue, False, *_scope(cue, False, clause, segments, cues)))
    states = []
    for ts, te in targets:
        if " not " in f" {clause[ts:te]} ":  # "the disc is not swollen"
            states.append("negated")
            continue
        holding = [
            (ts - cue.end if forward else cue.start - te, cue.state)
            for cue, forward, s, e in scopes
            if s <= ts and te <= e
        ]
        states.append(min(holding)[1] if holding else "present")
    return states


def extract_findings(report: str) -> ReportFindings:
    """Read a findings report: which findings it states as present, absent or uncertain, its impression and
    advice. Negation and hedging reach the findings and diagnoses of their own clause (see _CUES)."""
    out = ReportFindings()
    text = _clean(report)
    for sentence in _sentences(text):
        for clause in _clauses(sentence):
            work = clause
            found: list[tuple[tuple[str, ...], int, int]] = []
            for name, pattern in _FINDING_RES:
                for m in list(pattern.finditer(work)):
                    found.append(((name,), m.start(), m.end()))
                    work = _blank(work, m.start(), m.end())
            for m in _DRUSEN_RE.finditer(work):
                names = tuple(dict.fromkeys(name for word, name in _DRUSEN_SIZES if word in m.group(1)))
                found.append((names, m.start(), m.end()))
            diagnoses = _diagnoses(clause)
            states = _states(clause, [(s, e) for _, s, e in found] + [(s, e) for _, _, s, e in diagnoses])
            for (names, _, _), state in zip(found, states[: len(found)], strict=True):
                getattr(out, state).update(names)
            for (condition, stage, _, _), state in zip(diagnoses, states[len(found) :], strict=True):
                if state == "uncertain":
                    out.uncertain_diagnoses.add(condition)
                elif state == "present" and condition == "dr":
                    out.dr_grade = max(out.dr_grade, int(stage))
                elif state == "present":
                    out.diagnoses[condition] = stage
            for m in _RATIO_RE.finditer(clause):
                value = float(m.group(1))
                if value < 1.0:
                    out.cup_to_disc = value
                    if value >= ENLARGED_CUP_RATIO - 1e-9:
                        out.present.add("enlarged_cup")
    # A finding stated more than one way (in the findings and again in the negatives) takes its strongest state.
    out.uncertain -= out.present
    out.negated -= out.present | out.uncertain
    out.uncertain_diagnoses -= {*out.diagnoses, *(["dr"] if out.dr_grade else [])}
    for level, pattern in _RECOMMENDATION_RES:
        if pattern.search(text):
            out.urgency = level
            break
    return out


def _diagnoses(clause: str) -> list[tuple[str, str, int, int]]:
    """(condition, stage, start, end) of each diagnosis the clause names; for "dr" the stage is the grade."""
    out = []
    for m in _DR_RE.finditer(clause):
        if m.group(4) == "pdr":
            grade = 4
        elif m.group(2):
            proliferative = m.group(2).replace(" ", "") == "proliferative"
            grade = 4 if proliferative else _DR_LEVELS.get(m.group(1) or "", 2)
        elif m.group(3):
            grade = _DR_LEVELS[m.group(3)]
        else:
            grade = _DR_LEVELS.get(m.group(5) or "", 1)
        out.append(("dr", str(grade), m.start(), m.end()))
    for m in _GLAUCOMA_RE.finditer(clause):
        out.append(("glaucoma", _GLAUCOMA_STAGES[m.group(1)], m.start(), m.end()))
    for m in _AMD_RE.finditer(clause):
        out.append(("amd", _AMD_STAGES[m.group(1) or m.group(2)], m.start(), m.end()))
    for m in _HYPERTENSIVE_RE.finditer(clause):
        number = m.group(1)
        stage = f"grade {_GRADE_WORDS.get(number, number)}" if number else "grade 1"
        out.append(("hypertensive", stage, m.start(), m.end()))
    for m in _RVO_RE.finditer(clause):
        kind = m.group(1) or {"brvo": "branch", "crvo": "central"}.get(m.group(2) or "", "branch")
        out.append(("rvo", "branch" if kind == "hemi" else kind, m.start(), m.end()))
    return out


# --------------------------------------------------------------------------------------------------------------
# Report metrics
# --------------------------------------------------------------------------------------------------------------


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def report_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float | int]:
    """Findings-based scores of generated reports against reference reports (one per prediction).

    Returns ``report_num_examples``; ``report_finding_micro_precision`` / ``_recall`` / ``_f1`` (true and false
    positives pooled over every report and finding) and ``report_finding_macro_f1`` (mean of the per-finding F1
    over the findings named by a reference or a prediction); ``report_finding_f1/<finding>`` and
    ``report_finding_support/<finding>`` (reference reports stating it); ``report_impression_dr_grade_accuracy``,
    ``report_impression_diagnosis_f1`` (the other conditions named, pooled), ``report_impression_exact_match``
    (DR grade and every other diagnosis with its stage all right); ``report_recommendation_accuracy`` over the
    references that recommend something; and ``report_rouge_l`` (mean) and ``report_bleu`` (corpus BLEU-4).
    A finding counts as stated only when it is named as present: negated and unmentioned are the same.

    Hedged findings ("possible new vessels") are left out of precision and recall: a hedge in a generated report
    is no claim, so it is neither a true nor a false positive (a reference finding it only hedges on is still
    missed, else hedging every finding would score as well as naming the right ones); a finding the reference
    hedges on is not scored at all. They are counted instead: ``report_finding_uncertain`` (findings the
    generated reports hedge on), ``report_finding_uncertain_rate`` (their share of the findings those reports
    name, hedged or present) and ``report_finding_uncertain_reference`` (findings the references hedge on).
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    n = len(predictions)
    if n == 0:
        return {}
    counts = {f: [0, 0, 0] for f in FINDINGS}  # tp, fp, fn
    grade_hits = exact = 0
    diagnosis_counts = [0, 0, 0]
    advice_hits = advice_total = 0
    uncertain = uncertain_reference = named = 0
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = extract_findings(prediction), extract_findings(reference)
        uncertain += len(pred.uncertain)
        uncertain_reference += len(ref.uncertain)
        named += len(pred.uncertain | pred.present)
        for f in FINDINGS:
            if f in ref.uncertain:
                continue
            if f in pred.present and f in ref.present:
                counts[f][0] += 1
            elif f in pred.present:
                counts[f][1] += 1
            elif f in ref.present:
                counts[f][2] += 1
        grade_hits += pred.dr_grade == ref.dr_grade
        exact += pred.dr_grade == ref.dr_grade and pred.diagnoses == ref.diagnoses
        diagnosis_counts[0] += len(set(pred.diagnoses) & set(ref.diagnoses))
        diagnosis_counts[1] += len(set(pred.diagnoses) - set(ref.diagnoses))
        diagnosis_counts[2] += len(set(ref.diagnoses) - set(pred.diagnoses))
        if ref.urgency is not None:
            advice_total += 1
            advice_hits += pred.urgency == ref.urgency
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    precision, recall, f1 = _prf(tp, fp, fn)
    metrics: dict[str, float | int] = {
        "report_num_examples": n,
        "report_finding_micro_precision": precision,
        "report_finding_micro_recall": recall,
        "report_finding_micro_f1": f1,
        "report_finding_uncertain": uncertain,
        "report_finding_uncertain_rate": uncertain / named if named else 0.0,
        "report_finding_uncertain_reference": uncertain_reference,
    }
    per_finding = {}
    for f, (t, p, m) in counts.items():
        if t + p + m:
            per_finding[f] = _prf(t, p, m)[2]
            metrics[f"report_finding_f1/{f}"] = per_finding[f]
            metrics[f"report_finding_support/{f}"] = t + m
    # No finding named anywhere (all normal reports, all predicted normal) is full agreement.
    metrics["report_finding_macro_f1"] = sum(per_finding.values()) / len(per_finding) if per_finding else 1.0
    if not tp + fp + fn:
        metrics["report_finding_micro_f1"] = 1.0
    metrics["report_impression_dr_grade_accuracy"] = grade_hits / n
    metrics["report_impression_diagnosis_f1"] = _prf(*diagnosis_counts)[2] if sum(diagnosis_counts) else 1.0
    metrics["report_impression_exact_match"] = exact / n
    if advice_total:
        metrics["report_recommendation_accuracy"] = advice_hits / advice_total
    metrics["report_rouge_l"] = sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / n
    metrics["report_bleu"] = corpus_bleu(predictions, references)
    return metrics


# --------------------------------------------------------------------------------------------------------------
# Set and numeric answers
# --------------------------------------------------------------------------------------------------------------


def _answer_set(answer: str) -> frozenset[str]:
    items = split_answer_set(_clean(answer).replace(" quadrants", "").replace(" quadrant", ""))
    if items == ["all four"]:
        return frozenset(normalize_answer(q) for q in QUADRANTS)
    return frozenset(normalize_answer(item) for item in items)


def set_metrics(predictions: Sequence[str], references: Sequence[str], prefix: str) -> dict[str, float]:
    """Order-free scores of set answers ("a, b and c"; "none" is the empty set), averaged over rows:
    ``<prefix>_set_precision`` / ``_recall`` / ``_f1`` (1.0 when both sets are empty) and ``_exact_match``."""
    n = len(predictions)
    if n == 0:
        return {}
    totals = [0.0, 0.0, 0.0, 0.0]
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = _answer_set(prediction), _answer_set(reference)
        if not pred and not ref:
            scores = (1.0, 1.0, 1.0)
        else:
            common = len(pred & ref)
            scores = _prf(common, len(pred) - common, len(ref) - common)
        for i, value in enumerate((*scores, float(pred == ref))):
            totals[i] += value
    names = ("precision", "recall", "f1", "exact_match")
    return {f"{prefix}_set_{name}": total / n for name, total in zip(names, totals, strict=True)}


_NUMBER_RE = re.compile(r"(\d+(?:\s*\.\s*\d+)?)")


def parse_number(text: str) -> float | None:
    """The first number in an answer ("0.7", "0. 7" as a tokenizer decodes it, "ratio 0.6"), or None."""
    m = _NUMBER_RE.search(str(text))
    return float(m.group(1).replace(" ", "")) if m else None


def numeric_metrics(
    predictions: Sequence[str], references: Sequence[str], prefix: str, tolerance: float = 0.05
) -> dict[str, float | int]:
    """``<prefix>_mean_absolute_error`` over the answers that hold a number, ``<prefix>_accuracy`` (within
    ``tolerance`` of the reference, over all rows) and ``<prefix>_unparsed`` (answers without a number)."""
    errors, hits, unparsed = [], 0, 0
    for prediction, reference in zip(predictions, references, strict=True):
        ref = parse_number(reference)
        if ref is None:
            continue
        pred = parse_number(prediction)
        if pred is None:
            unparsed += 1
            continue
        errors.append(abs(pred - ref))
        hits += abs(pred - ref) <= tolerance + 1e-9
    total = len(errors) + unparsed
    if not total:
        return {}
    metrics: dict[str, float | int] = {f"{prefix}_accuracy": hits / total, f"{prefix}_unparsed": unparsed}
    if errors:
        metrics[f"{prefix}_mean_absolute_error"] = sum(errors) / len(errors)
    return metrics


def multidisease_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    question_types: Sequence[str],
    report_types: Sequence[str] = (REPORT_QUESTION_TYPE,),
    set_types: Sequence[str] = SET_QUESTION_TYPES,
    numeric_types: Sequence[str] = NUMERIC_QUESTION_TYPES,
) -> dict[str, float | int]:
    """The scores above for the rows of each report, set and numeric question type present (else nothing)."""
    rows: dict[str, list[int]] = {}
    for i, question_type in enumerate(question_types):
        rows.setdefault(str(question_type), []).append(i)
    metrics: dict[str, float | int] = {}

    def pick(question_type: str) -> tuple[list[str], list[str]]:
        index = rows[question_type]
        return [predictions[i] for i in index], [references[i] for i in index]

    report_rows = [i for t in report_types for i in rows.get(t, [])]
    if report_rows:
        metrics.update(report_metrics([predictions[i] for i in report_rows], [references[i] for i in report_rows]))
    for question_type in set_types:
        if question_type in rows:
            metrics.update(set_metrics(*pick(question_type), prefix=question_type))
    for question_type in numeric_types:
        if question_type in rows:
            metrics.update(numeric_metrics(*pick(question_type), prefix=question_type))
    return metrics
