"""The findings extractor and the multi-disease scores (retina_vqa.metrics.findings) on hand-written text."""

from __future__ import annotations

from pathlib import Path

import pytest

from retina_vqa.metrics import compute_vqa_metrics
from retina_vqa.metrics.findings import (
    extract_findings,
    multidisease_metrics,
    numeric_metrics,
    parse_number,
    report_metrics,
    set_metrics,
)


@pytest.mark.parametrize(
    ("sentence", "present", "negated"),
    [
        ("Dot and blot haemorrhages and hard exudates.", {"haemorrhages", "hard_exudates"}, set()),
        ("There are no haemorrhages.", set(), {"haemorrhages"}),
        ("Hard exudates without neovascularisation.", {"hard_exudates"}, {"neovascularisation"}),
        ("There is no evidence of disc swelling or new vessels.", set(), {"disc_swelling", "neovascularisation"}),
        ("Microaneurysms are not seen, but cotton-wool spots are.", {"cotton_wool_spots"}, {"microaneurysms"}),
        ("The disc is not swollen.", set(), {"disc_swelling"}),
        ("No haemorrhages; flame hemorrhages are absent.", set(), {"haemorrhages", "flame_haemorrhages"}),
        ("Flame-shaped haemorrhages in the superior temporal quadrant.", {"flame_haemorrhages"}, set()),
        ("A splinter haemorrhage at the disc margin.", {"disc_haemorrhage"}, set()),
        ("Subretinal haemorrhage over a CNV.", {"macular_haemorrhage", "choroidal_neovascularisation"}, set()),
        ("Preretinal haemorrhage and NVD.", {"preretinal_haemorrhage", "neovascularisation"}, set()),
        ("Small and intermediate drusen.", {"small_drusen", "intermediate_drusen"}, set()),
        ("Large soft drusen with pigmentary changes.", {"large_drusen", "pigment_changes"}, set()),
        ("No large drusen.", set(), {"large_drusen"}),
        ("Drusen at the macula.", set(), set()),  # no size named: not counted
        ("An area of geographic atrophy.", {"geographic_atrophy"}, set()),
        ("AV nicking and attenuated arterioles.", {"av_nicking", "arteriolar_narrowing"}, set()),
        ("The veins are dilated and tortuous.", {"dilated_tortuous_veins"}, set()),
        ("Beading of the veins.", {"venous_beading"}, set()),
        ("Papilloedema.", {"disc_swelling"}, set()),
        ("Thinning of the neuroretinal rim inferiorly.", {"rim_thinning"}, set()),
        ("The cup is enlarged.", {"enlarged_cup"}, set()),
        ("Soft exudates.", {"cotton_wool_spots"}, set()),
        ("Exudates without haemorrhages.", {"hard_exudates"}, {"haemorrhages"}),
    ],
)
def test_findings_with_negation(sentence, present, negated):
    found = extract_findings(sentence)
    assert found.present == present
    assert found.negated == negated
    assert found.uncertain == set()


def _states(sentence: str) -> dict[str, str]:
    found = extract_findings(sentence)
    states = {f: "present" for f in found.present} | {f: "negated" for f in found.negated}
    return states | {f: "uncertain" for f in found.uncertain}


# Sentences the extractor used to misread (the old reading in the comment).
@pytest.mark.parametrize(
    ("sentence", "states"),
    [
        # Both absent: the post-cue reached back across the comma.
        (
            "Microaneurysms are present, new vessels are not seen.",
            {"microaneurysms": "present", "neovascularisation": "negated"},
        ),
        # Both absent: the "not" of "not seen" reached forward across the comma.
        (
            "Haemorrhages are not seen, microaneurysms are present.",
            {"haemorrhages": "negated", "microaneurysms": "present"},
        ),
        ("Neovascularisation cannot be excluded.", {"neovascularisation": "uncertain"}),  # absent: read "excluded"
        ("Possible venous beading", {"venous_beading": "uncertain"}),  # present
    ],
)
def test_negation_stays_in_its_clause_and_hedges_are_uncertain(sentence, states):
    assert _states(sentence) == states


def test_negation_in_the_impression_stays_in_its_clause():
    found = extract_findings("Impression: no glaucoma, intermediate AMD.")  # read no AMD
    assert found.diagnoses == {"amd": "intermediate"}
    assert found.uncertain_diagnoses == set()


@pytest.mark.parametrize(
    "sentence",
    [
        "No new vessels.",
        "There are no new vessels.",
        "Without new vessels.",
        "Absence of new vessels.",
        "Negative for new vessels.",
        "No evidence of new vessels.",
        "No signs of new vessels.",
        "Free of new vessels.",
        "Neither new vessels nor haemorrhages.",
        "The scan rules out new vessels.",
    ],
)
def test_pre_negation_cues(sentence):
    assert _states(sentence)["neovascularisation"] == "negated"


@pytest.mark.parametrize(
    "sentence",
    [
        "New vessels are not seen.",
        "New vessels are absent.",
        "New vessels are not present.",
        "New vessels are not identified.",
        "New vessels are not detected.",
        "New vessels are not visible.",
        "New vessels have been ruled out.",
        "New vessels are excluded.",
    ],
)
def test_post_negation_cues(sentence):
    assert _states(sentence)["neovascularisation"] == "negated"


@pytest.mark.parametrize(
    "sentence",
    [
        "No increase in microaneurysms.",
        "No change in the microaneurysms.",
        "No significant change in microaneurysms.",
        "No progression of microaneurysms.",
        "Not only microaneurysms but also haemorrhages.",
    ],
)
def test_pseudo_negations_negate_nothing(sentence):
    assert _states(sentence)["microaneurysms"] == "present"


@pytest.mark.parametrize(
    ("sentence", "finding"),
    [
        # Before the finding.
        ("Possible venous beading.", "venous_beading"),
        ("Suspected choroidal neovascularisation.", "choroidal_neovascularisation"),
        ("Changes suspicious for new vessels.", "neovascularisation"),
        ("Appearance suggestive of disc swelling.", "disc_swelling"),
        ("Likely new vessels at the disc.", "neovascularisation"),
        ("Cannot exclude neovascularisation.", "neovascularisation"),
        ("The lesion may represent a choroidal neovascular membrane.", "choroidal_neovascularisation"),
        ("Probable microaneurysms.", "microaneurysms"),
        ("Questionable disc haemorrhage.", "disc_haemorrhage"),
        # After the finding.
        ("Venous beading is possible.", "venous_beading"),
        ("Choroidal neovascularisation is suspected.", "choroidal_neovascularisation"),
        ("New vessels are likely.", "neovascularisation"),
        ("Neovascularisation cannot be excluded.", "neovascularisation"),
        ("Neovascularisation cannot be ruled out.", "neovascularisation"),
        ("Neovascularisation is not excluded.", "neovascularisation"),
        ("Microaneurysms may be present.", "microaneurysms"),
    ],
)
def test_uncertainty_cues_before_and_after_the_finding(sentence, finding):
    assert _states(sentence) == {finding: "uncertain"}


@pytest.mark.parametrize(
    ("sentence", "states"),
    [
        # Comma-joined clauses: each cue stays in its own.
        ("Microaneurysms, no new vessels, possible venous beading.",
         {"microaneurysms": "present", "neovascularisation": "negated", "venous_beading": "uncertain"}),
        ("No haemorrhages, microaneurysms present.", {"haemorrhages": "negated", "microaneurysms": "present"}),
        ("Microaneurysms, haemorrhages are absent.", {"microaneurysms": "present", "haemorrhages": "negated"}),
        # Lists: a negated list closes with "or", a subject list with a conjunction before the post-cue.
        ("There are no haemorrhages, exudates or new vessels.",
         {"haemorrhages": "negated", "hard_exudates": "negated", "neovascularisation": "negated"}),
        ("No haemorrhages, exudates, or new vessels are seen.",
         {"haemorrhages": "negated", "hard_exudates": "negated", "neovascularisation": "negated"}),
        ("Haemorrhages, exudates and new vessels are not seen.",
         {"haemorrhages": "negated", "hard_exudates": "negated", "neovascularisation": "negated"}),
        ("No haemorrhages, microaneurysms and hard exudates present.",
         {"haemorrhages": "negated", "microaneurysms": "present", "hard_exudates": "present"}),
        # Semicolons, "but", "although", and "and" between two clauses with their own verbs.
        ("No new vessels; microaneurysms present.", {"neovascularisation": "negated", "microaneurysms": "present"}),
        ("Microaneurysms present; new vessels absent.", {"microaneurysms": "present", "neovascularisation": "negated"}),
        ("No new vessels but microaneurysms.", {"neovascularisation": "negated", "microaneurysms": "present"}),
        ("No new vessels, although venous beading is suspected.",
         {"neovascularisation": "negated", "venous_beading": "uncertain"}),
        ("Microaneurysms are present and new vessels are not seen.",
         {"microaneurysms": "present", "neovascularisation": "negated"}),
        ("The retina shows microaneurysms and new vessels are not seen.",
         {"microaneurysms": "present", "neovascularisation": "negated"}),
        # A cue that reads both ways reads forward when a finding follows it.
        ("Hard exudates and possible new vessels.", {"hard_exudates": "present", "neovascularisation": "uncertain"}),
        # Stated more than one way: present over uncertain over negated.
        ("Possible new vessels at the disc. No new vessels elsewhere.", {"neovascularisation": "uncertain"}),
        ("Possible microaneurysms. Microaneurysms are present.", {"microaneurysms": "present"}),
    ],
)  # fmt: skip
def test_cue_scope_ends_with_its_clause(sentence, states):
    assert _states(sentence) == states


def test_choroidal_neovascularisation_is_not_retinal_new_vessels():
    found = extract_findings("There is no evidence of choroidal neovascularisation. Neovascularisation of the disc.")
    assert found.present == {"neovascularisation"}
    assert found.negated == {"choroidal_neovascularisation"}


def test_cup_to_disc_ratio_from_raw_and_decoded_text():
    assert extract_findings("The cup-to-disc ratio is 0.7.").present == {"enlarged_cup"}
    # The tiny tokenizer decodes "0.7" as "0. 7" and hyphens spaced out.
    decoded = extract_findings("the disc looks healthy, cup - to - disc ratio 0. 4. there are microaneurysms.")
    assert decoded.cup_to_disc == 0.4
    assert decoded.present == {"microaneurysms"}


@pytest.mark.parametrize(
    ("impression", "grade", "diagnoses"),
    [
        ("Impression: moderate non-proliferative diabetic retinopathy.", 2, {}),
        ("Impression: proliferative diabetic retinopathy and early glaucoma.", 4, {"glaucoma": "early"}),
        ("Impression: no diabetic retinopathy.", 0, {}),
        ("Impression: normal fundus.", 0, {}),
        ("Severe NPDR with advanced glaucomatous optic neuropathy.", 3, {"glaucoma": "advanced"}),
        (
            "Consistent with neovascular age-related macular degeneration and grade 3 hypertensive retinopathy.",
            0,
            {"amd": "late wet", "hypertensive": "grade 3"},
        ),
        ("Impression: CRVO.", 0, {"rvo": "central"}),
        ("Branch retinal vein occlusion; no glaucoma.", 0, {"rvo": "branch"}),
        ("Impression: no glaucoma, intermediate AMD.", 0, {"amd": "intermediate"}),
        ("Impression: no diabetic retinopathy or glaucoma, CRVO.", 0, {"rvo": "central"}),
        ("Impression: moderate NPDR, no glaucoma, early AMD.", 2, {"amd": "early"}),
        ("Impression: CRVO without glaucoma.", 0, {"rvo": "central"}),
        ("Impression: early glaucoma; diabetic retinopathy is absent.", 0, {"glaucoma": "early"}),
    ],
)
def test_impression(impression, grade, diagnoses):
    found = extract_findings(impression)
    assert found.dr_grade == grade
    assert found.diagnoses == diagnoses


@pytest.mark.parametrize(
    ("impression", "grade", "diagnoses", "uncertain"),
    [
        ("Impression: possible early glaucoma.", 0, {}, {"glaucoma"}),
        ("Impression: moderate NPDR, suspected wet AMD.", 2, {}, {"amd"}),
        ("Impression: proliferative diabetic retinopathy cannot be excluded.", 0, {}, {"dr"}),
        ("Impression: suspected PDR, moderate NPDR.", 2, {}, set()),  # graded: no longer only hedged
    ],
)
def test_hedged_impression_is_neither_graded_nor_staged(impression, grade, diagnoses, uncertain):
    found = extract_findings(impression)
    assert (found.dr_grade, found.diagnoses, found.uncertain_diagnoses) == (grade, diagnoses, uncertain)


@pytest.mark.parametrize(
    ("text", "urgency"),
    [
        ("Routine screening in 12 months.", 0),
        ("Refer within 3 months.", 1),
        ("Referral within 4 weeks.", 2),
        ("Urgent referral within 2 weeks.", 3),
        ("Same-day emergency referral.", 4),
        ("Impression: normal fundus.", None),
    ],
)
def test_recommendation(text, urgency):
    assert extract_findings(text).urgency == urgency


def test_report_metrics_score_findings_not_fluency():
    reference = (
        "There are microaneurysms and dot and blot haemorrhages. There is no evidence of neovascularisation. "
        "Impression: moderate non-proliferative diabetic retinopathy. Refer within 3 months."
    )
    # Fluent and nearly word-for-word, but it turns the negated finding into a present one and misses one.
    fluent_wrong = (
        "There are microaneurysms and neovascularisation. There is no evidence of haemorrhages. "
        "Impression: moderate non-proliferative diabetic retinopathy. Refer within 3 months."
    )
    terse_right = "Microaneurysms, blot haemorrhages, no new vessels. Moderate NPDR; refer within three months."
    wrong = report_metrics([fluent_wrong], [reference])
    right = report_metrics([terse_right], [reference])
    assert wrong["report_rouge_l"] > right["report_rouge_l"]
    assert right["report_finding_micro_f1"] == 1.0
    # tp 1 (microaneurysms), fp 1 (neovascularisation), fn 1 (haemorrhages).
    assert wrong["report_finding_micro_precision"] == wrong["report_finding_micro_recall"] == 0.5
    assert wrong["report_finding_f1/neovascularisation"] == 0.0
    assert wrong["report_finding_f1/microaneurysms"] == 1.0
    assert wrong["report_finding_macro_f1"] == pytest.approx(1 / 3)
    assert right["report_impression_dr_grade_accuracy"] == wrong["report_impression_dr_grade_accuracy"] == 1.0
    assert right["report_recommendation_accuracy"] == 1.0


def test_hedged_findings_are_counted_apart_from_precision_and_recall():
    reference = "There are microaneurysms and new vessels. Possible venous beading."
    predictions = [
        "There are microaneurysms. Possible new vessels. Venous beading.",  # hedges on a reference finding
        "There are microaneurysms and new vessels. Possible hard exudates.",  # hedges on an unmentioned one
    ]
    scores = report_metrics(predictions, [reference, reference])
    # Venous beading (hedged by the reference) is not scored; hedges are no positives, true or false: tp 3
    # (microaneurysms twice, new vessels once), fp 0, fn 1 (the new vessels the first report only hedges on).
    assert scores["report_finding_micro_precision"] == 1.0
    assert scores["report_finding_micro_recall"] == 0.75
    assert "report_finding_f1/venous_beading" not in scores and "report_finding_f1/hard_exudates" not in scores
    assert scores["report_finding_uncertain"] == 2
    assert scores["report_finding_uncertain_rate"] == pytest.approx(2 / 6)  # of the six findings named
    assert scores["report_finding_uncertain_reference"] == 2
    plain = report_metrics([reference.split(".")[0] + "."], [reference.split(".")[0] + "."])
    assert plain["report_finding_uncertain"] == plain["report_finding_uncertain_rate"] == 0


def test_report_impression_agreement_counts_stages():
    reference = "Impression: severe non-proliferative diabetic retinopathy and advanced glaucoma. Refer within 4 weeks."
    stage_off = "Impression: severe non-proliferative diabetic retinopathy and early glaucoma. Refer within 3 months."
    scores = report_metrics([stage_off, reference], [reference, reference])
    assert scores["report_impression_dr_grade_accuracy"] == 1.0
    assert scores["report_impression_diagnosis_f1"] == 1.0  # glaucoma named both times
    assert scores["report_impression_exact_match"] == 0.5  # but once at the wrong stage
    assert scores["report_recommendation_accuracy"] == 0.5


def test_set_answers_are_order_free():
    scores = set_metrics(
        ["glaucoma and diabetic retinopathy", "glaucoma", "none", "none"],
        ["diabetic retinopathy and glaucoma", "diabetic retinopathy and glaucoma", "none", "glaucoma"],
        prefix="diseases",
    )
    assert scores["diseases_set_exact_match"] == 0.5
    assert scores["diseases_set_precision"] == pytest.approx((1 + 1 + 1 + 0) / 4)
    assert scores["diseases_set_recall"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert scores["diseases_set_f1"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    quadrants = set_metrics(["all four quadrants"], ["superior-temporal, superior-nasal, inferior-temporal and "
                                                     "inferior-nasal"], prefix="q")  # fmt: skip
    assert quadrants["q_set_exact_match"] == 1.0


def test_numeric_answers():
    assert parse_number("0. 7") == 0.7 and parse_number("about 0.65") == 0.65 and parse_number("none") is None
    scores = numeric_metrics(["0.7", "0. 5", "large"], ["0.7", "0.3", "0.6"], prefix="cup_to_disc")
    assert scores["cup_to_disc_mean_absolute_error"] == pytest.approx(0.1)
    assert scores["cup_to_disc_accuracy"] == pytest.approx(1 / 3)
    assert scores["cup_to_disc_unparsed"] == 1


def test_compute_vqa_metrics_reports_multidisease_keys_only_when_asked():
    report = "There are microaneurysms. Impression: mild non-proliferative diabetic retinopathy. Rescreen in 12 months."
    predictions = [report, "glaucoma", "0. 6", "yes"]
    references = [report, "glaucoma", "0.6", "yes"]
    types = ["findings_report", "diseases", "cup_to_disc", "abnormality"]
    metrics = compute_vqa_metrics(predictions, references, question_types=types)
    assert metrics["report_finding_micro_f1"] == 1.0
    assert metrics["diseases_set_exact_match"] == 1.0
    assert metrics["cup_to_disc_accuracy"] == 1.0
    assert metrics == {**metrics, **multidisease_metrics(predictions, references, types)}
    dr_only = compute_vqa_metrics(["yes"], ["yes"], question_types=["abnormality"])
    assert not any(k.startswith(("report_", "diseases_", "cup_to_disc")) for k in dr_only)


def test_decoded_decimals_are_put_back_together():
    from transformers import AutoProcessor

    from retina_vqa.metrics import decode_ids

    config = Path(__file__).resolve().parents[2] / "configs" / "blip-tiny-multidisease"
    tokenizer = AutoProcessor.from_pretrained(config).tokenizer
    ids = tokenizer(["0.7", "the cup-to-disc ratio is 0.6."], padding=True)["input_ids"]
    assert tokenizer.batch_decode(ids, skip_special_tokens=True)[0] == "0. 7"  # what WordPiece gives back
    assert decode_ids(tokenizer, ids) == ["0.7", "the cup - to - disc ratio is 0.6."]


def test_prior_answers_the_most_common_report_as_written():
    import datasets

    from retina_vqa.metrics import score_prior

    normal = "There are no haemorrhages, exudates or new vessels. Impression: no retinopathy. Rescreen in 12 months."
    sick = "There are microaneurysms. Impression: mild non-proliferative diabetic retinopathy. Rescreen in 12 months."
    train = datasets.Dataset.from_dict(
        {
            "question": ["describe the findings."] * 3,
            "answer": [normal, normal, sick],
            "question_type": ["findings_report"] * 3,
        }
    )
    test = datasets.Dataset.from_dict(
        {"question": ["describe the findings."] * 2, "answer": [normal, sick], "question_type": ["findings_report"] * 2}
    )
    scores = score_prior(train, test)
    # Read with its full stops the normal report states no finding: it gets the normal eye right and misses one.
    assert scores["report_finding_micro_recall"] == 0.0 and scores["report_finding_micro_precision"] == 0.0
    assert scores["report_impression_dr_grade_accuracy"] == 0.5
    assert scores["report_recommendation_accuracy"] == 1.0
    assert scores["exact_match"] == 0.5


def test_model_card_shows_the_report_table(tmp_path):
    import json
    from types import SimpleNamespace

    from retina_vqa.training.model_card import render_model_card

    metrics = {"predict_report_finding_micro_f1": 0.61, "predict_prior_report_finding_micro_f1": 0.0}
    metrics |= {"predict_report_rouge_l": 0.7, "predict_prior_report_rouge_l": 0.4}
    (tmp_path / "all_results.json").write_text(json.dumps(metrics))
    card = render_model_card("m", str(tmp_path), [], SimpleNamespace())
    assert "| finding F1, micro (pooled over findings) | 0.6100 | 0.0000 |" in card
    assert "| ROUGE-L | 0.7000 | 0.4000 |" in card
    assert "| findings hedged, share of those named (never counted as positives) | - | - |" in card
    (tmp_path / "all_results.json").write_text(json.dumps({"predict_exact_match": 0.5}))
    assert "most common report" not in render_model_card("m", str(tmp_path), [], SimpleNamespace())
