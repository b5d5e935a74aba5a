"""End-to-end runs of the entry script: in-process, from a config file, resumed, tracked, and under DDP."""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, BlipForQuestionAnswering

from retina_vqa.data.images import load_image
from retina_vqa.models.attention import apply_cross_attention_mask_fix
from retina_vqa.models.blip import generate_answers

from .helpers import ROOT, TINY_CONFIG, accelerate_launch, make_tiny_model
from .same_answers import CLEAR, StepRecorder, answers_alone, assert_same_where_clear, clear_ranking
from .wandb_records import history_rows

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402
from retina_vqa.data.loading import load_dataset_dir

from .helpers import common_args, fine_tune_args, read_jsonl


@pytest.fixture(scope="module")
def full_run(tiny_dataset_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    args = common_args(tiny_dataset_dir, output_dir) + [
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        # Closed question types ranked over the training answers, open ones generated; temperatures fitted.
        "--answer_mode",
        "auto",
        "--calibrate",
    ]
    results = run_vqa.main(args)
    return output_dir, results


def test_results_files_hold_train_eval_predict_and_baseline(full_run, tiny_dataset_dir):
    output_dir, results = full_run
    all_results = json.loads((output_dir / "all_results.json").read_text())
    test_rows = len(load_dataset_dir(str(tiny_dataset_dir))["test"])
    for key in (
        "train_loss",
        "eval_loss",
        "eval_exact_match",
        "eval_token_f1",
        "eval_rouge_l",
        "eval_bleu",
        "eval_closed_accuracy",
        "eval_open_token_recall",
        "eval_exact_match/diagnosis",
        "eval_diagnosis_accuracy",
        "eval_prior_exact_match",
        "eval_prior_exact_match/diagnosis",
        "predict_exact_match",
        "predict_exact_match/laterality",
        "predict_diagnosis_confusion/healthy retina->mild dr",
        "eval_diagnosis_qwk",
        "eval_diagnosis_referable_sensitivity_ci_low",
        "eval_prior_diagnosis_any_dr_specificity",
        "predict_diagnosis_any_dr_specificity_ci_high",
        "predict_diagnosis_non_grade_answers",
    ):
        assert key in all_results, key
    # The prior answers every diagnosis with the training majority, "healthy retina": kappa 0, nothing flagged.
    assert all_results["predict_prior_diagnosis_qwk"] == 0.0
    assert all_results["predict_prior_diagnosis_referable_sensitivity"] == 0.0
    assert all_results["predict_prior_diagnosis_referable_specificity"] == 1.0
    assert all_results["predict_samples"] == test_rows
    assert all_results == pytest.approx({**all_results, **{k: v for k, v in results.items() if k in all_results}})
    for name in ("train_results.json", "eval_results.json", "predict_results.json", "trainer_state.json"):
        assert (output_dir / name).exists(), name
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4 and all(v == v for v in losses)  # logged each step, no NaN


def test_saved_model_is_safetensors_with_processor_and_card(full_run):
    output_dir, _ = full_run
    assert (output_dir / "model.safetensors").exists()
    assert not list(output_dir.glob("*.bin")) or [p.name for p in output_dir.glob("*.bin")] == ["training_args.bin"]
    assert (output_dir / "tokenizer.json").exists()
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: visual-question-answering" in card
    assert "AutoModelForVisualQuestionAnswering" in card
    assert "| diagnosis |" in card  # per-question-type table next to the baseline
    results = json.loads((output_dir / "all_results.json").read_text())
    # The grading table, model next to the question prior (kappa 0 for a constant answer).
    assert f"| quadratic weighted kappa | {results['predict_diagnosis_qwk']:.3f} | 0.000 |" in card
    assert "| referable DR specificity |" in card and "_ci_low" not in card
    saved = load_file(output_dir / "model.safetensors")
    assert any(k.startswith("text_decoder.") for k in saved)


def test_saved_tokenizer_truncates_questions_as_training_did(full_run):

    output_dir, _ = full_run
    tokenizer = AutoProcessor.from_pretrained(output_dir).tokenizer
    assert tokenizer.model_max_length == 32  # --max_question_length (default)
    assert len(tokenizer("which eye " * 40, truncation=True)["input_ids"]) == 32


def test_predictions_file_has_every_test_row_once(full_run, tiny_dataset_dir):
    output_dir, _ = full_run
    test = load_dataset_dir(str(tiny_dataset_dir))["test"]
    rows = read_jsonl(output_dir / "predictions.jsonl")
    assert [r["id"] for r in rows] == list(range(len(test)))
    assert [r["question"] for r in rows] == test["question"]
    assert [r["reference"] for r in rows] == test["answer"]
    assert {"prediction", "correct", "question_type", "image_id"} <= set(rows[0])


def test_reloaded_model_gives_the_same_predictions(full_run, tiny_dataset_dir):
    """Generated rows: the saved model's answer; ranked rows: the saved model ranking its saved candidates
    (answer_candidates.json, temperatures included) through the Python API, with the same probabilities."""
    from retina_vqa.inference import answer_questions, load_for_inference

    output_dir, _ = full_run
    model = BlipForQuestionAnswering.from_pretrained(output_dir).eval()
    apply_cross_attention_mask_fix(model)
    processor = AutoProcessor.from_pretrained(output_dir)
    loaded = load_for_inference(output_dir, device="cpu")
    test = load_dataset_dir(str(tiny_dataset_dir))["test"]
    rows = read_jsonl(output_dir / "predictions.jsonl")
    # The run answered in batches with fused attention, here each question is asked alone: equal answers wherever
    # the choice is clear of float rounding (tests.same_answers), so counted where compared.
    compared = {"ranked": 0, "generated": 0}
    for index in range(0, len(test), 5):
        example = test[index]
        if "answer_scores" in rows[index]:
            ranked = answer_questions(
                *loaded, example["image"], example["question"], answer_mode="auto", return_scores=True
            )[0]
            assert ranked["answer_scores"] == pytest.approx(rows[index]["answer_scores"], abs=1e-5)
            if clear_ranking(ranked["answer_scores"], 1e-5):
                assert ranked["answer"] == rows[index]["prediction"]
                compared["ranked"] += 1
            continue
        inputs = processor(images=load_image(example["image"]), text=example["question"], return_tensors="pt")
        steps = StepRecorder()
        ids = generate_answers(
            model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], max_length=12, **steps.kwargs
        )
        if steps.smallest_margin() > CLEAR:
            assert processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip() == rows[index]["prediction"]
            compared["generated"] += 1
    assert compared["ranked"] >= 5 and compared["generated"] >= 1, compared  # 7 and 1 of the 8 rows here


def test_ranked_answers_carry_probabilities_and_calibration_metrics(full_run, tiny_dataset_dir):
    from retina_vqa.metrics.calibration import expected_calibration_error, referable_probability, roc_auc

    output_dir, _ = full_run
    results = json.loads((output_dir / "all_results.json").read_text())
    saved = json.loads((output_dir / "answer_candidates.json").read_text())
    rows = read_jsonl(output_dir / "predictions.jsonl")
    # --answer_mode auto: every closed row is ranked over its type's training answers, the open ones generated.
    for row in rows:
        if row["answer_type"] != "closed":
            assert "answer_scores" not in row
            continue
        scores = row["answer_scores"]
        assert set(scores) == set(saved["answers"][row["question_type"]])
        assert row["prediction"] == max(scores, key=scores.get)
        assert sum(scores.values()) == pytest.approx(1.0)
    ranked = [row for row in rows if "answer_scores" in row]
    assert results["predict_ranked_questions"] == len(ranked) == sum(r["answer_type"] == "closed" for r in rows)
    # --calibrate: one temperature per ranked type of more than one answer, saved and reported; predictions.jsonl
    # holds the temperature-scaled probabilities, whose ECE is the one reported.
    multi = {t for t, answers in saved["answers"].items() if len(answers) > 1 and saved["closed"][t]}
    assert set(saved["temperatures"]) == multi
    for name, temperature in saved["temperatures"].items():
        assert results[f"eval_temperature/{name}"] == pytest.approx(temperature)
    confidences = [max(r["answer_scores"].values()) for r in ranked]
    ece = expected_calibration_error(confidences, [r["correct"] for r in ranked])
    assert results["predict_ece_calibrated"] == pytest.approx(ece, abs=1e-6)
    for key in ("eval_ece", "eval_ece_calibrated", "eval_ece/diagnosis", "predict_ece", "predict_ece/laterality"):
        assert 0.0 <= results[key] <= 1.0, key
    # The three test images hold referable and non-referable grades: the AUC of P(referable) is reported.
    diagnosis = [r for r in ranked if r["question_type"] == "diagnosis"]
    auc = roc_auc(
        [referable_probability(list(r["answer_scores"]), list(r["answer_scores"].values())) for r in diagnosis],
        [r["reference"] in ("moderate dr", "severe dr", "proliferative dr") for r in diagnosis],
    )
    assert results["predict_diagnosis_referable_auc_calibrated"] == pytest.approx(auc)
    # Saved with the model and every checkpoint; the reliability plot and the card's table.
    assert all((output_dir / name / "answer_candidates.json").exists() for name in ("checkpoint-2", "checkpoint-4"))
    assert (output_dir / "calibration.png").exists()
    assert "| expected calibration error (10 bins) |" in (output_dir / "README.md").read_text()


def test_yaml_config_file_runs_and_unknown_keys_are_named(tiny_dataset_dir, tmp_path):
    import yaml

    output_dir = tmp_path / "out"
    config = {
        "model_name_or_path": "",
        "config_name": str(TINY_CONFIG),
        "dataset_dir": str(tiny_dataset_dir),
        "output_dir": str(output_dir),
        "do_eval": True,
        "max_eval_samples": 5,
        "per_device_eval_batch_size": 5,
        "generation_max_length": 6,
        "report_to": "none",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    results = run_vqa.main([str(path)])
    assert results["eval_samples"] == 5 and "eval_exact_match" in results
    path.write_text(yaml.safe_dump({**config, "learnig_rate": 1e-3}))
    with pytest.raises(ValueError, match="learnig_rate"):
        run_vqa.main([str(path)])


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(tiny_dataset_dir, tmp_path):
    straight = tmp_path / "straight"
    args = ["--do_train", "--max_steps", "4", "--save_steps", "2"]
    run_vqa.main(common_args(tiny_dataset_dir, straight) + args)

    interrupted = tmp_path / "interrupted"
    run_vqa.main(common_args(tiny_dataset_dir, interrupted) + args)
    # Leave only the first checkpoint, as if the run had died after step 2.
    for path in interrupted.iterdir():
        if path.name != "checkpoint-2":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_vqa.main(common_args(tiny_dataset_dir, interrupted) + args)

    state = json.loads((interrupted / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    first = load_file(straight / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors")
    for name, tensor in first.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_non_empty_output_dir_without_checkpoint_is_refused(tiny_dataset_dir, tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "results_i_care_about.json").write_text("{}")
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        run_vqa.main(common_args(tiny_dataset_dir, output_dir) + ["--do_train", "--max_steps", "1"])
    assert (output_dir / "results_i_care_about.json").read_text() == "{}"


def test_bad_columns_and_splits_fail_before_training(tiny_dataset_dir, tmp_path):
    with pytest.raises(ValueError, match=r"Did you mean --question_column question\?"):
        run_vqa.main(common_args(tiny_dataset_dir, tmp_path / "a") + ["--do_train", "--question_column", "questoin"])
    with pytest.raises(ValueError, match=r"'dev' split.*\['train', 'validation', 'test'\]"):
        run_vqa.main(common_args(tiny_dataset_dir, tmp_path / "b") + ["--do_eval", "--validation_split", "dev"])
    with pytest.raises(FileNotFoundError, match="retina_vqa.synthetic"):
        run_vqa.main(common_args(tmp_path / "missing", tmp_path / "c") + ["--do_train"])
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("checkpoint-*"))


def test_wandb_offline_run_logs_eval_metrics(tiny_dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "retina-vqa-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = common_args(tiny_dataset_dir, tmp_path / "out") + [
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--max_eval_samples",
        "13",
        "--report_to",
        "wandb",
        "--run_name",
        "offline-test",
    ]
    results = run_vqa.main(args)
    run_files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(run_files) == 1
    rows = history_rows(run_files[0])
    logged = [row for row in rows if "eval/exact_match" in row]
    assert logged, f"no eval metrics in {[sorted(r) for r in rows]}"
    assert logged[-1]["eval/exact_match"] == pytest.approx(results["eval_exact_match"])
    assert any("train/loss" in row for row in rows)


@pytest.mark.e2e
def test_accelerate_launch_two_cpu_processes(tiny_dataset_dir, tmp_path):
    # A wide random init answers each question differently, so a prediction written to the wrong row shows.

    from retina_vqa.inference import load_for_inference

    output_dir = tmp_path / "ddp"
    args = fine_tune_args(tiny_dataset_dir, output_dir, tmp_path / "start", make_tiny_model(init_range=0.5))
    command = accelerate_launch(
        "cpu_ddp.yaml",
        29531,
        *args,
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--max_steps",
        "2",
        "--learning_rate",
        "1e-6",
        "--per_device_train_batch_size",
        "4",
        "--max_eval_samples",
        "13",
        "--max_predict_samples",
        "27",
        "--answer_mode",
        "auto",  # ranked rows' ids and NaN-padded candidate scores gathered from both processes
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((output_dir / "all_results.json").read_text())
    # 13 and 27 rows over 2 processes: the padding duplicate must not be counted.
    assert results["eval_num_examples"] == 13 and results["predict_num_examples"] == 27
    rows = read_jsonl(output_dir / "predictions.jsonl")
    test = load_dataset_dir(str(tiny_dataset_dir))["test"].select(range(27))
    assert [r["question"] for r in rows] == test["question"]
    # Each row's prediction is the saved model's answer to that row, asked alone: equal wherever the choice is clear
    # of float rounding between batched and single passes (tests.same_answers; ranked rows: the top probability
    # leads by more than the rounding allowed below). A prediction written to the wrong row differs.
    model, processor = load_for_inference(output_dir, device="cpu")
    alone, margins = answers_alone(
        model, processor, test["image"], test["question"], max_new_tokens=11, answer_mode="auto", return_scores=True
    )
    assert len({a["answer"] for a in alone}) >= 5, alone
    margins = [
        margin if a["answer_scores"] is None else math.inf if clear_ranking(a["answer_scores"], 1e-3) else 0.0
        for a, margin in zip(alone, margins, strict=True)
    ]
    assert_same_where_clear([r["prediction"] for r in rows], [a["answer"] for a in alone], margins, at_least=22)
    # The same probabilities, up to float32 rounding between batched and single passes (this wide init turns it
    # into ~1e-4 of a probability); a row's scores written to another row would differ by far more.
    assert [r.get("answer_scores") for r in rows] == [
        None if a["answer_scores"] is None else pytest.approx(a["answer_scores"], abs=1e-3) for a in alone
    ]
    assert sum(a["answer_scores"] is not None for a in alone) > 13  # both processes' ranked rows
    log = completed.stdout + completed.stderr
    assert "Process rank 0" in log and "Process rank 1" in log


def test_flags_after_a_config_file_override_it(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "",
                "config_name": "x",
                "dataset_dir": "d",
                "output_dir": "o",
                "num_train_epochs": 3,
                "do_train": True,
                "cache_dir": None,
            }
        )
    )
    model_args, data_args, training_args = run_vqa.parse_args([str(path), "--num_train_epochs", "1"])
    assert training_args.num_train_epochs == 1 and training_args.do_train
    assert model_args.model_name_or_path is None and model_args.cache_dir is None


def test_grouped_evaluation_gives_the_same_metrics_and_predictions(tiny_dataset_dir, tmp_path, monkeypatch):
    # Evaluation and prediction in answering order (questions grouped by text, rows put back afterwards),
    # each image encoded once per evaluation, against plain dataset order.
    from retina_vqa.inference import load_for_inference
    from retina_vqa.training import embedding_cache

    encoded = []
    original = embedding_cache.encode_images

    def counting(model, pixel_values, *args):
        encoded.append(pixel_values.shape[0])
        return original(model, pixel_values, *args)

    monkeypatch.setattr(embedding_cache, "encode_images", counting)

    def run(name: str, grouped: bool) -> tuple[dict, list[dict]]:
        output_dir = tmp_path / name
        args = common_args(tiny_dataset_dir, output_dir) + ["--do_train", "--do_eval", "--do_predict"]
        args += ["--max_steps", "12", "--plot", "false", "--group_eval_by_question", str(grouped).lower()]
        args += ["--per_device_eval_batch_size", "4"]  # several batches per image's questions
        results = run_vqa.main(args)
        return results, read_jsonl(output_dir / "predictions.jsonl")

    plain, plain_rows = run("plain", False)
    plain_encoded = sum(encoded)
    encoded.clear()
    grouped, grouped_rows = run("grouped", True)
    # Each of the 3 validation and 3 test images is encoded once, although its questions span many batches.
    assert sum(encoded) == 3 + 3
    assert plain_encoded == 3 + 3  # dataset order with the evaluation cache: once as well

    assert len({r["prediction"] for r in plain_rows}) > 1  # answers differ between rows
    # Other batches, other padding: every row's prediction the same where its choices are clear of float rounding
    # (tests.same_answers, the model asked each question alone), and every other field the same.
    model, processor = load_for_inference(tmp_path / "plain", device="cpu")
    splits = load_dataset_dir(str(tiny_dataset_dir))
    clear = {}
    for prefix, split in (("eval_", "validation"), ("predict_", "test")):
        _, margins = answers_alone(
            model, processor, splits[split]["image"], splits[split]["question"], max_new_tokens=11
        )
        clear[prefix] = all(margin > CLEAR for margin in margins)
        if split == "test":
            assert_same_where_clear(
                [r["prediction"] for r in grouped_rows], [r["prediction"] for r in plain_rows], margins, at_least=35
            )
    answered = ("prediction", "correct")
    assert [{k: v for k, v in r.items() if k not in answered} for r in grouped_rows] == [
        {k: v for k, v in r.items() if k not in answered} for r in plain_rows
    ]
    # The metrics of a split whose every answer is clear are the same (smallest margin here 3e-3, 3x CLEAR).
    for key, value in plain.items():
        if (
            key.startswith(("eval_", "predict_"))
            and "loss" not in key
            and "per_second" not in key
            and "runtime" not in key
            and clear[key[: key.index("_") + 1]]
        ):
            assert grouped[key] == pytest.approx(value), key


@pytest.mark.parametrize("config", ["blip2-opt-tiny", "blip2-t5-tiny", "instructblip-tiny"])
def test_blip2_families_train_evaluate_predict_and_answer_as_plain_transformers(config, tiny_dataset_dir, tmp_path):
    """The same run_vqa.py, flags and outputs for BLIP-2 (OPT, T5) and InstructBLIP; the saved folder answers
    through plain transformers (AutoModelForImageTextToText + AutoProcessor + generate, as the model card shows)
    exactly as the run's predictions.jsonl says."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from retina_vqa.models.blip2 import init_query_tokens

    # A checkpoint to fine-tune, initialised wide so that its answers differ from question to question.
    pretrained = AutoConfig.from_pretrained(ROOT / "configs" / config)
    pretrained.text_config.initializer_range, pretrained.text_config.initializer_factor = 0.3, 3.0
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(pretrained)
    init_query_tokens(model)
    output_dir = tmp_path / "out"
    args = fine_tune_args(tiny_dataset_dir, output_dir, tmp_path / "start", model, ROOT / "configs" / config)
    args += ["--do_train", "--do_eval", "--do_predict", "--max_steps", "4", "--learning_rate", "1e-5"]
    args += ["--max_eval_samples", "13", "--max_predict_samples", "13", "--plot", "false"]
    results = run_vqa.main(args)
    assert results["predict_num_examples"] == 13 and "eval_exact_match" in results and results["train_loss"] > 0
    assert "predict_prior_exact_match" in results
    saved = json.loads((output_dir / "config.json").read_text())
    assert saved["architectures"][0].endswith("ForConditionalGeneration")
    assert (output_dir / "model.safetensors").exists() and "AutoModelForImageTextToText" in (
        output_dir / "README.md"
    ).read_text()

    rows = read_jsonl(output_dir / "predictions.jsonl")
    test = load_dataset_dir(str(tiny_dataset_dir))["test"].select(range(13))
    assert [r["question"] for r in rows] == test["question"]
    model = AutoModelForImageTextToText.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    decoder_only = model.config.use_decoder_only_language_model
    plain, margins = [], []
    for image, question in zip(test["image"], test["question"], strict=True):
        inputs = processor(
            images=load_image(image),
            text=f"Question: {question} Answer:",
            truncation=True,
            return_tensors="pt",
        )
        settings = model.generation_config
        steps = StepRecorder()
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams, **steps.kwargs
            )
        answer_ids = out[0, inputs["input_ids"].shape[1] :] if decoder_only else out[0]
        plain.append(processor.decode(answer_ids, skip_special_tokens=True).strip())
        margins.append(steps.smallest_margin())
    # The run answered in batches: the same answers wherever the choices are clear of float rounding between a
    # padded batch and one question (tests.same_answers).
    assert settings.num_beams == 1  # greedy search: the margins say which rows rounding cannot change
    assert_same_where_clear([r["prediction"] for r in rows], plain, margins, at_least=9)  # 10-12 of 13 here
    assert len(set(plain)) > 1
    # python -m retina_vqa.predict, batched, with the prompt saved in config.json: the same answers.
    from retina_vqa import predict

    assert saved["prompt_template"] == "Question: {question} Answer:"
    answered = tmp_path / "answered.jsonl"
    predict.main(
        ["--model_name_or_path", str(output_dir), "--dataset_dir", str(tiny_dataset_dir), "--split", "test"]
        + ["--max_samples", "13", "--batch_size", "5", "--output_file", str(answered), "--device", "cpu"]
    )
    assert_same_where_clear([r["prediction"] for r in read_jsonl(answered)], plain, margins, at_least=9)

    # Ranked answers (every type, the open ones too) through the Trainer and through retina_vqa.predict, both over
    # the answer_candidates.json saved by the run: the same answers and probabilities.
    args = common_args(tiny_dataset_dir, tmp_path / "ranked")
    args[args.index("--model_name_or_path") + 1] = str(output_dir)
    del args[args.index("--config_name") : args.index("--config_name") + 2]
    run_vqa.main(args + ["--do_predict", "--answer_mode", "rank", "--max_predict_samples", "13", "--plot", "false"])
    ranked = read_jsonl(tmp_path / "ranked" / "predictions.jsonl")
    candidates = json.loads((output_dir / "answer_candidates.json").read_text())["answers"]
    assert all(r["prediction"] in candidates[r["question_type"]] for r in ranked)
    predict.main(
        ["--model_name_or_path", str(output_dir), "--dataset_dir", str(tiny_dataset_dir), "--split", "test"]
        + ["--max_samples", "13", "--output_file", str(answered), "--device", "cpu", "--answer_mode", "rank"]
    )
    answered_rows = read_jsonl(answered)
    # Other batches: the probabilities within float rounding, so the same answer where one clearly leads.
    for trainer_row, predict_row in zip(ranked, answered_rows, strict=True):
        assert trainer_row["answer_scores"] == pytest.approx(predict_row["answer_scores"], abs=1e-3)
    leading = [math.inf if clear_ranking(r["answer_scores"], 1e-3) else 0.0 for r in ranked]
    assert_same_where_clear(
        [r["prediction"] for r in answered_rows], [r["prediction"] for r in ranked], leading, at_least=10
    )


def test_lora_run_trains_adapters_only_and_hands_over_a_merged_model(tiny_dataset_dir, tmp_path):
    from retina_vqa.inference import answer_questions, load_for_inference
    from retina_vqa.models.lora import load_adapter

    output_dir = tmp_path / "out"
    args = fine_tune_args(tiny_dataset_dir, output_dir, tmp_path / "start", make_tiny_model(init_range=0.5))
    args += ["--do_train", "--do_predict", "--max_steps", "3", "--lora_r", "4", "--max_predict_samples", "13"]
    results = run_vqa.main(args + ["--plot", "false", "--save_strategy", "no"])
    assert 0 < results["trainable_parameters"] < results["total_parameters"] / 10
    assert (output_dir / "adapter" / "adapter_model.safetensors").exists()
    # The folder itself is a plain BLIP (merged): no peft needed, same answers as the adapter model gave.
    assert json.loads((output_dir / "config.json").read_text())["architectures"] == ["BlipForQuestionAnswering"]
    assert not (output_dir / "adapter_config.json").exists()
    test = load_dataset_dir(str(tiny_dataset_dir))["test"].select(range(13))
    model, processor = load_for_inference(output_dir, device="cpu")
    merged = answer_questions(model, processor, test["image"], test["question"], max_new_tokens=11)
    # The run evaluated and predicted with the merged model it hands over.
    assert [r["prediction"] for r in read_jsonl(output_dir / "predictions.jsonl")] == merged
    assert len(set(merged)) > 2
    # The folder is the adapter model merged, weight for weight, and training moved the adapted weights only.
    # Compared as weights: this wide random model amplifies the float rounding of a merged weight (~1e-7) by orders
    # of magnitude in its logits (a 0.08 to 1.0 difference at a scale of 17-20, depending on the training run).
    base = make_tiny_model(init_range=0.5)
    untrained = {name: weight.clone() for name, weight in base.state_dict().items()}
    adapter = load_adapter(base, output_dir / "adapter").eval()
    saved = model.state_dict()
    merged_weights = adapter.merge_and_unload().state_dict()
    assert set(saved) == set(merged_weights)
    for name, weight in saved.items():
        torch.testing.assert_close(weight, merged_weights[name], rtol=1e-6, atol=1e-6, msg=name)
    changed = [name for name, weight in saved.items() if not torch.allclose(weight, untrained[name], atol=1e-4)]
    assert 0 < len(changed) < len(saved) / 4, changed  # the LoRA targets, not the whole model


def test_blip2_trains_in_bf16_on_the_cpu_without_nans(tiny_dataset_dir, tmp_path):
    """bf16 mixed precision (BLIP-2's GPU default) on the CPU: finite losses, the Q-Former's weights stay fp32."""
    output_dir = tmp_path / "out"
    args = common_args(tiny_dataset_dir, output_dir)
    args[args.index("--config_name") + 1] = str(ROOT / "configs" / "blip2-opt-tiny")
    args += ["--do_train", "--do_eval", "--max_steps", "4", "--bf16", "--use_cpu", "--max_eval_samples", "13"]
    results = run_vqa.main(args + ["--plot", "false", "--save_strategy", "no"])
    losses = [
        e["loss"] for e in json.loads((output_dir / "trainer_state.json").read_text())["log_history"] if "loss" in e
    ]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert torch.isfinite(torch.tensor(results["eval_loss"]))
    saved = load_file(output_dir / "model.safetensors")
    assert {t.dtype for k, t in saved.items() if k.startswith("qformer.")} == {torch.float32}


@pytest.mark.e2e
def test_lora_under_two_ddp_processes_merges_then_evaluates_and_predicts(tiny_dataset_dir, tmp_path):
    """`accelerate launch` with two CPU processes and --lora_r: every process merges the adapters after training,
    evaluation and prediction run on the merged model, and the folder holds the merged model only."""
    output_dir = tmp_path / "ddp-lora"
    args = fine_tune_args(tiny_dataset_dir, output_dir, tmp_path / "start", make_tiny_model(init_range=0.5))
    command = accelerate_launch(
        "cpu_ddp.yaml", 29547, *args, "--do_train", "--do_eval", "--do_predict", "--max_steps", "2",
        "--lora_r", "4", "--per_device_train_batch_size", "4", "--max_eval_samples", "13",
        "--max_predict_samples", "13", "--plot", "false", "--save_strategy", "no",
    )  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_samples"] == 13 and results["predict_samples"] == 13
    assert 0 < results["trainable_parameters"] < results["total_parameters"] / 10
    assert json.loads((output_dir / "config.json").read_text())["architectures"] == ["BlipForQuestionAnswering"]
    assert (
        not (output_dir / "adapter_config.json").exists() and (output_dir / "adapter" / "adapter_config.json").exists()
    )
    assert len(read_jsonl(output_dir / "predictions.jsonl")) == 13
