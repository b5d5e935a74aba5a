"""Findings reports (retina_vqa.synthetic.reports): shape, determinism, read back by the extractor, tokenised.

The extractor of retina_vqa.metrics.findings must recover every finding, the impression and the recommendation
from every report the generator writes; these tests check it on generated datasets and on many random
combinations of findings and stages (every wording gets picked).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers import AutoProcessor, BlipConfig

from retina_vqa.metrics.findings import extract_findings
from retina_vqa.models.tiny_blip import _basic_tokens, build_tiny_blip
from retina_vqa.questions import FINDINGS, all_texts, condition_texts
from retina_vqa.synthetic import CONDITIONS, generate_dataset, sample_conditions
from retina_vqa.synthetic.conditions import CUP_TO_DISC, DEFAULT_PREVALENCE, OTHER_CONDITIONS
from retina_vqa.synthetic.reports import report_texts, urgency, write_report

from ..helpers import same_built_file

ROOT = Path(__file__).resolve().parents[2]
TINY_MULTIDISEASE = ROOT / "configs" / "blip-tiny-multidisease"
DEMO_CONFIG = ROOT / "configs" / "demo-multidisease.yaml"


def _sentences(report: str) -> list[str]:
    return re.split(r"(?<=\.)\s+(?=[A-Z])", report)


def _random_case(rng: np.random.Generator) -> dict:
    """Any grade, any subset of findings, any stages: more combinations than drawn eyes ever show."""
    state = sample_conditions(rng, CONDITIONS, dict.fromkeys(OTHER_CONDITIONS, 0.6))
    findings = [f for f in FINDINGS if rng.random() < 0.3]
    # The disc sentence states the ratio, which the extractor reads as an enlarged cup from 0.6: keep them agreeing.
    cup_to_disc = CUP_TO_DISC["advanced" if "enlarged_cup" in findings else "none"][int(rng.integers(0, 2))]
    return {
        "grade": int(rng.integers(0, 5)),
        "findings": findings,
        "stages": {c: state.stage(c) for c in OTHER_CONDITIONS},
        "cup_to_disc": cup_to_disc,
        "rvo_quadrant": state.rvo_quadrant,
    }


def _check_read_back(report: str, grade: int, findings, stages: dict) -> None:
    found = extract_findings(report)
    assert found.present == set(findings), report
    assert found.dr_grade == grade, report
    assert found.diagnoses == {c: s for c, s in stages.items() if s != "none"}, report
    assert found.urgency == urgency(grade, stages), report
    assert 2 <= len(_sentences(report)) <= 6, report


def test_extractor_reads_back_every_generated_reference_report(multi_rows):
    reports = [r for r in multi_rows if r["question_type"] == "findings_report"]
    assert len(reports) == 40
    for row in reports:
        meta = row["conditions"]
        _check_read_back(row["answer"], row["grade"], meta["findings"], {c: meta[c] for c in OTHER_CONDITIONS})
        assert meta["findings"] or row["grade"] == 0


def test_extractor_reads_back_random_combinations():
    rng = np.random.default_rng(0)
    for _ in range(400):
        case = _random_case(rng)
        report = write_report(rng, case["grade"], case["findings"], case["stages"], CONDITIONS,
                              case["cup_to_disc"], case["rvo_quadrant"])  # fmt: skip
        _check_read_back(report, case["grade"], case["findings"], case["stages"])


def test_reports_are_deterministic_and_varied():
    case = {"grade": 2, "findings": ["microaneurysms", "haemorrhages", "hard_exudates"], "stages": {"amd": "early"}}
    first = write_report(np.random.default_rng(3), **case)
    assert write_report(np.random.default_rng(3), **case) == first
    wordings = {write_report(np.random.default_rng(seed), **case) for seed in range(20)}
    assert len(wordings) >= 4
    assert "refer within 3 months" in first.lower() or "referral within 3 months" in first.lower()


def test_dr_only_reports():
    dd = generate_dataset(6, 0, 0, image_size=64, seed=1, question_types=["findings_report"], num_workers=1)
    rows = dd["train"].remove_columns("image").to_dict()
    for report, grade, meta in zip(rows["answer"], rows["grade"], rows["conditions"], strict=True):
        _check_read_back(report, grade, meta["findings"], {})
        if grade == 0:
            endings = ("Routine screening in 12 months.", "Rescreen in 12 months.")
            assert any(report.endswith(f"Impression: no diabetic retinopathy. {end}") for end in endings), report
        assert "cup-to-disc" not in report and "macula" not in report.lower().replace("near the macula", "")


def test_unknown_finding_is_refused():
    with pytest.raises(ValueError, match="FINDINGS"):
        write_report(np.random.default_rng(0), 0, ["cataract"], {})


def test_shipped_multidisease_config_is_what_the_script_builds(tmp_path):
    texts = all_texts(paraphrase=True) + condition_texts(paraphrase=True) + report_texts()
    build_tiny_blip(tmp_path, texts, max_text_positions=192)
    for name in ("vocab.txt", "config.json", "tokenizer_config.json", "processor_config.json"):
        assert same_built_file(tmp_path / name, TINY_MULTIDISEASE / name), (
            f"configs/blip-tiny-multidisease/{name} is stale: run `python -m retina_vqa.models.tiny_blip --output_dir "
            "configs/blip-tiny-multidisease --vocabulary multidisease --max_text_positions 192`"
        )


def test_multidisease_vocabulary_and_answer_length_fit_the_demo(multi_rows):
    tokenizer = AutoProcessor.from_pretrained(TINY_MULTIDISEASE).tokenizer
    vocab = set(tokenizer.get_vocab())
    for row in multi_rows:
        for word in _basic_tokens(row["question"]) + _basic_tokens(row["answer"]):
            assert word in vocab, (word, row["answer"])  # a word outside would split into characters
    # The longest reports: every condition at its most wordy stage, every finding, over many wordings.
    rng = np.random.default_rng(1)
    stages = {"glaucoma": "advanced", "amd": "late wet", "hypertensive": "grade 4", "rvo": "branch"}
    longest = max(
        len(tokenizer(write_report(rng, 4, FINDINGS, stages, CONDITIONS, 0.9, "superior-temporal"))["input_ids"])
        for _ in range(100)
    )
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    positions = BlipConfig.from_pretrained(TINY_MULTIDISEASE).text_config.max_position_embeddings
    # input_ids hold [CLS] report [SEP]; the answer is [DEC] report [SEP]: the same count.
    assert longest <= demo["max_answer_length"] <= positions, longest
    assert demo["config_name"] == "configs/blip-tiny-multidisease"
    assert set(DEFAULT_PREVALENCE) == set(OTHER_CONDITIONS)
