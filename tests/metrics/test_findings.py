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
    ],
)
def test_impression(impression, grade, diagnoses):
    found = extract_findings(impression)
    assert found.dr_grade == grade
    assert found.diagnoses == diagnoses


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
    (tmp_path / "all_results.json").write_text(json.dumps({"predict_exact_match": 0.5}))
    assert "most common report" not in render_model_card("m", str(tmp_path), [], SimpleNamespace())
