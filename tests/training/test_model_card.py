"""The model card: temperature-scaled numbers of ranked answers say which rows the temperatures were fitted on."""

from __future__ import annotations

import json
from types import SimpleNamespace

from retina_vqa.training.model_card import render_model_card

# As run_vqa.py saves them with --answer_mode auto --calibrate --do_eval --do_predict: the temperatures are fitted on
# the validation rows (eval_*_calibrated), then applied to the test rows (predict_*_calibrated).
RANKED = {
    "eval_ranked_questions": 40,
    "eval_ranked_accuracy": 0.8,
    "eval_ece": 0.21,
    "eval_ece_calibrated": 0.03,
    "eval_diagnosis_referable_auc": 0.9,
    "eval_diagnosis_referable_auc_calibrated": 0.91,
    "eval_temperature/diagnosis": 1.7,
    "predict_ranked_questions": 30,
    "predict_ranked_accuracy": 0.7,
    "predict_ece": 0.25,
    "predict_ece_calibrated": 0.12,
    "predict_diagnosis_referable_auc": 0.85,
    "predict_diagnosis_referable_auc_calibrated": 0.86,
}


def card_for(tmp_path, metrics: dict[str, float]) -> str:
    (tmp_path / "all_results.json").write_text(json.dumps(metrics))
    return render_model_card("m", str(tmp_path), [], SimpleNamespace())


def section(card: str, title: str) -> str:
    return card.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


def test_validation_numbers_after_temperature_scaling_are_labelled_in_sample_next_to_the_held_out_ones(tmp_path):
    card = card_for(tmp_path, RANKED)
    evaluation, test = section(card, "Evaluation"), section(card, "Test (predict)")
    # The validation split's scaled numbers, only in the table that says they are in-sample ...
    assert "| ece_calibrated |" not in card and "| diagnosis_referable_auc_calibrated |" not in card
    header = next(line for line in evaluation.splitlines() if line.startswith("| ranked answers |"))
    assert "in-sample (fitted on these rows)" in header and "held out" in header
    # ... next to the test split's, which were not fitted on.
    assert "| expected calibration error (10 bins) | 0.2100 | 0.0300 | 0.1200 |" in evaluation
    assert "| referable DR ROC AUC (P(moderate or worse)) | 0.9000 | 0.9100 | 0.8600 |" in evaluation
    test_header = next(line for line in test.splitlines() if line.startswith("| ranked answers |"))
    assert "held out" in test_header and "in-sample" not in test_header
    assert "| expected calibration error (10 bins) | 0.2500 | 0.1200 |" in test


def test_without_a_test_split_the_in_sample_numbers_say_so_alone(tmp_path):
    card = card_for(tmp_path, {k: v for k, v in RANKED.items() if k.startswith("eval_")})
    evaluation = section(card, "Evaluation")
    header = next(line for line in evaluation.splitlines() if line.startswith("| ranked answers |"))
    assert "in-sample (fitted on these rows)" in header and "held out" not in header
    assert "| expected calibration error (10 bins) | 0.2100 | 0.0300 |" in evaluation
    assert "no held-out" in evaluation.lower()


def test_uncalibrated_ranking_claims_nothing_about_fitting(tmp_path):
    plain = {k: v for k, v in RANKED.items() if "_calibrated" not in k and "temperature/" not in k}
    card = card_for(tmp_path, plain)
    assert "| expected calibration error (10 bins) | 0.2100 | - |" in card
    assert "in-sample" not in card and "held out" not in card


def test_the_training_settings_name_the_objective_the_grouping_and_the_augmentation(tmp_path):
    args = SimpleNamespace(learning_rate=1e-3, image_loss_weight=1.0, group_by_image=True, max_questions_per_image=2)
    card = render_model_card("m", str(tmp_path), [], args, augment=True)
    settings = card.split("## Training settings\n", 1)[1]
    for row in ("| image_loss_weight | 1.0 |", "| max_questions_per_image | 2 |", "| augment | True |"):
        assert row in settings
    assert "| augment |" not in render_model_card("m", str(tmp_path), [], args)  # not a training run
