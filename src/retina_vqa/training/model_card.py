"""The model card (README.md) saved with every fine-tuned model and pushed to the hub."""

from __future__ import annotations

import json
import os
from typing import Any

USAGE = """\
```python
import torch
from PIL import Image
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

model = AutoModelForVisualQuestionAnswering.from_pretrained("{repo}")
processor = AutoProcessor.from_pretrained("{repo}")

image = Image.open("fundus.jpg").convert("RGB")
inputs = processor(images=image, text="what is the diagnosis?", return_tensors="pt")
# BLIP's generate uses its text decoder's settings, which from_pretrained does not restore from
# generation_config.json: pass the saved answer length and beams explicitly.
settings = model.generation_config
with torch.no_grad():
    answer_ids = model.generate(**inputs, max_length=settings.max_length, num_beams=settings.num_beams)
print(processor.decode(answer_ids[0], skip_special_tokens=True))
```

For batches of questions of different lengths use `retina_vqa.models.blip.generate_answers`, which
passes the question padding mask to the answer decoder (the stock `generate` does not, so padded
questions can get different answers than the same questions one at a time), or
`python -m retina_vqa.predict --model_name_or_path {repo} --image fundus.jpg --question "..."`.
"""


PROMPT_USAGE = """\
```python
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo}")
processor = AutoProcessor.from_pretrained("{repo}")

image = Image.open("fundus.jpg").convert("RGB")
# The prompt the model was trained with; truncation=True keeps the question length of training.
inputs = processor(images=image, text={prompt!r}.format(question="what is the diagnosis?"), truncation=True,
                   return_tensors="pt")
settings = model.generation_config
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams)
{cut}
print(processor.decode(answer_ids, skip_special_tokens=True))
```

Or `python -m retina_vqa.predict --model_name_or_path {repo} --image fundus.jpg --question "..."`, which answers
batches with the prompts padded on the left of their image tokens.
"""


ADAPTER_USAGE = """\
This repository holds a LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`), not a full model: loading
it downloads the base model `{base}` and applies the adapter (with `peft` installed, `pip install peft`). The
snippet below does that as it is; `PeftModel.from_pretrained(base_model, "{repo}")` does it by hand, and
`.merge_and_unload()` turns the result into a plain model. `retina_vqa.inference.load_for_inference("{repo}")`
loads it with the saved answer settings.

"""


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _metrics_table(metrics: dict[str, Any], prefix: str) -> str:
    rows = [
        (key[len(prefix) :], value)
        for key, value in sorted(metrics.items())
        if key.startswith(prefix)
        and isinstance(value, (int, float))
        # Intervals are shown in the grading table, next to their value; temperature-scaled numbers in the ranking
        # table, which says which rows the temperatures were fitted on.
        and not any(
            part in key
            for part in ("confusion", "/", "_prior_", "runtime", "per_second", "_ci_", "_calibrated", "operating_point")
        )
    ]
    if not rows:
        return ""
    lines = ["| metric | value |", "| --- | --- |"] + [f"| {k} | {_format(v)} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def _per_type_table(metrics: dict[str, Any], prefix: str) -> str:
    key_prefix = f"{prefix}exact_match/"
    types = sorted(k[len(key_prefix) :] for k in metrics if k.startswith(key_prefix))
    if not types:
        return ""
    header = "| question type | exact match | question-prior baseline |\n| --- | --- | --- |\n"
    rows = []
    for question_type in types:
        prior = metrics.get(f"{prefix}prior_exact_match/{question_type}")
        prior_text = _format(prior) if prior is not None else "-"
        rows.append(f"| {question_type} | {_format(metrics[key_prefix + question_type])} | {prior_text} |")
    return header + "\n".join(rows) + "\n"


# Rows of the grading table: (label, key after "<split>_diagnosis_"), see metrics.grading.
_GRADING_ROWS = (
    ("quadratic weighted kappa", "qwk"),
    ("referable DR (moderate or worse) sensitivity", "referable_sensitivity"),
    ("referable DR specificity", "referable_specificity"),
    ("any DR (mild or worse) sensitivity", "any_dr_sensitivity"),
    ("any DR specificity", "any_dr_specificity"),
    ("answers that are not a grade", "non_grade_answers"),
    ("macro one-vs-rest AUROC over the grades (ranked answers)", "macro_auroc"),
    ("referable DR sensitivity per patient (worse eye)", "patient_referable_sensitivity"),
    ("referable DR specificity per patient (worse eye)", "patient_referable_specificity"),
)


def _grading_value(metrics: dict[str, Any], key: str) -> str:
    if key not in metrics:
        return "-"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    interval = f" ({low:.3f}-{high:.3f})" if low is not None and high is not None else ""
    value = metrics[key]
    return (f"{value:.3f}" if isinstance(value, float) else str(value)) + interval


def _grading_table(metrics: dict[str, Any], prefix: str) -> str:
    if f"{prefix}diagnosis_non_grade_answers" not in metrics:
        return ""
    lines = ["| metric | model | question prior |", "| --- | --- | --- |"]
    for label, key in _GRADING_ROWS:
        model = _grading_value(metrics, f"{prefix}diagnosis_{key}")
        prior = _grading_value(metrics, f"{prefix}prior_diagnosis_{key}")
        if model == prior == "-":  # not measured in this run (no ranked answers, no patients)
            continue
        lines.append(f"| {label} | {model} | {prior} |")
    return "\n".join(lines) + "\n"


def _operating_point_table(metrics: dict[str, Any], prefix: str) -> str:
    """Sensitivity and specificity at each referral threshold of ``--operating_points`` (metrics.screening)."""
    names = sorted(
        key[len(f"{prefix}operating_point_") : -len("_threshold")]
        for key in metrics
        if key.startswith(f"{prefix}operating_point_") and key.endswith("_threshold")
    )
    if not names:
        return ""
    lines = ["| operating point | threshold on P(referable) | sensitivity | specificity |", "| --- | --- | --- | --- |"]
    for name in names:
        key = f"{prefix}operating_point_{name}"
        sensitivity, specificity = (
            _grading_value(metrics, f"{key}_sensitivity"),
            _grading_value(metrics, f"{key}_specificity"),
        )
        lines.append(
            f"| {name.replace('_', ' ')} | {metrics[f'{key}_threshold']:.4f} | {sensitivity} | {specificity} |"
        )
    return "\n".join(lines) + "\n"


# Rows of the ranking table: (label, key after "<split>_"), see metrics.calibration.
_RANKING_ROWS = (
    ("expected calibration error (10 bins)", "ece"),
    ("referable DR ROC AUC (P(moderate or worse))", "diagnosis_referable_auc"),
)


def _has_calibrated(metrics: dict[str, Any], prefix: str) -> bool:
    return any(f"{prefix}{key}_calibrated" in metrics for _, key in _RANKING_ROWS)


def _ranking_table(metrics: dict[str, Any], prefix: str) -> str:
    """Ranked answers (--answer_mode rank/auto): ECE and the referable-DR AUC, before and after temperature scaling.

    run_vqa.py --calibrate fits the temperatures on the validation rows, so the validation split's scaled numbers
    are in-sample; the test split's (``predict_``), scaled by the same temperatures, are the held-out ones and stand
    next to them.
    """
    if f"{prefix}ece" not in metrics:
        return ""
    calibrated = _has_calibrated(metrics, prefix)
    in_sample = calibrated and prefix == "eval_"
    held_out = "predict_" if in_sample and _has_calibrated(metrics, "predict_") else None
    if not calibrated:
        scaled_label = "temperature-scaled"
    elif in_sample:
        scaled_label = "temperature-scaled, in-sample (fitted on these rows)"
    else:
        scaled_label = "temperature-scaled, held out (not fitted on these rows)"
    header = ["ranked answers", "temperature 1", scaled_label]
    if held_out:
        header.append("temperature-scaled, held out (test split)")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def cell(key: str) -> str:
        return "-" if key not in metrics else _format(metrics[key])

    for label, key in _RANKING_ROWS:
        if f"{prefix}{key}" in metrics:
            row = [label, cell(f"{prefix}{key}"), cell(f"{prefix}{key}_calibrated")]
            if held_out:
                row.append(cell(f"{held_out}{key}_calibrated"))
            lines.append("| " + " | ".join(row) + " |")
    count, accuracy = metrics.get(f"{prefix}ranked_questions"), metrics.get(f"{prefix}ranked_accuracy")
    if count is not None and accuracy is not None:
        # Accuracy does not depend on the temperature; the test split's is in its own table.
        row = [f"accuracy of the {count} ranked questions", _format(accuracy), _format(accuracy)]
        lines.append("| " + " | ".join(row + (["-"] if held_out else [])) + " |")
    return "\n".join(lines) + "\n"


def _ranking_note(metrics: dict[str, Any], prefix: str) -> str:
    """What the temperature-scaled column of `prefix`'s ranking table is measured on."""
    if not _has_calibrated(metrics, prefix):
        return ""
    if prefix != "eval_":
        return (
            " The temperature-scaled numbers are held out: the temperatures (`--calibrate`) were fitted on "
            "validation rows, not on these."
        )
    note = (
        " The temperatures (`--calibrate`) were fitted on these validation rows, so their temperature-scaled numbers "
        "are in-sample (optimistic)"
    )
    if _has_calibrated(metrics, "predict_"):
        return note + "; the held-out ones are the test split's, with the same temperatures."
    return note + ". No held-out numbers: the test split was not scored with them (`--do_predict`)."


# Rows of the findings-report table: (label, key after "<split>_"), see metrics.findings.
_REPORT_ROWS = (
    ("finding F1, micro (pooled over findings)", "report_finding_micro_f1"),
    ("finding F1, macro (mean over findings)", "report_finding_macro_f1"),
    ("finding precision, micro", "report_finding_micro_precision"),
    ("finding recall, micro", "report_finding_micro_recall"),
    ("findings hedged, share of those named (never counted as positives)", "report_finding_uncertain_rate"),
    ("impression: DR grade right", "report_impression_dr_grade_accuracy"),
    ("impression: other diagnoses F1", "report_impression_diagnosis_f1"),
    ("impression: every diagnosis and stage right", "report_impression_exact_match"),
    ("recommendation right", "report_recommendation_accuracy"),
    ("ROUGE-L", "report_rouge_l"),
    ("BLEU-4", "report_bleu"),
)


def _report_table(metrics: dict[str, Any], prefix: str) -> str:
    if f"{prefix}report_finding_micro_f1" not in metrics:
        return ""
    lines = ["| metric | model | most common report |", "| --- | --- | --- |"]
    for label, key in _REPORT_ROWS:
        model, prior = metrics.get(f"{prefix}{key}"), metrics.get(f"{prefix}prior_{key}")
        lines.append(
            f"| {label} | {'-' if model is None else _format(model)} | {'-' if prior is None else _format(prior)} |"
        )
    return "\n".join(lines) + "\n"


def render_model_card(
    model_name: str,
    output_dir: str,
    log_history: list[dict[str, Any]],
    training_args: Any,
    finetuned_from: str | None = None,
    dataset: str | None = None,
    tasks: str | None = "visual-question-answering",
    language: str | None = "en",
    license: str | None = None,
    tags: list[str] | None = None,
    prompt_template: str | None = None,
    decoder_only: bool = True,
    repo_id: str | None = None,
    adapter_base: str | None = None,
    augment: bool | None = None,
    **_: Any,
) -> str:
    """Markdown with hub metadata, results next to the question-prior baseline, usage and settings.

    `repo_id`: the hub repository the card is pushed to (the usage snippet loads it); default: ``--hub_model_id``,
    else the output folder. `adapter_base`: the folder holds a LoRA adapter on this base model (``--merge_lora
    false``): the card says so and how it loads. `augment`: whether training images were augmented (``--augment``).
    """
    results_path = os.path.join(output_dir, "all_results.json")
    metrics: dict[str, Any] = {}
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            metrics = json.load(f)
    repo = repo_id or getattr(training_args, "hub_model_id", None) or output_dir
    all_tags = ["retina-vqa", "blip", "visual-question-answering", "ophthalmology", "fundus"] + list(tags or [])
    if adapter_base:
        all_tags += ["lora", "peft"]
        finetuned_from = finetuned_from or adapter_base
    library = "peft" if adapter_base else "transformers"
    front = ["---", f"library_name: {library}", "pipeline_tag: visual-question-answering"]
    if license:
        front.append(f"license: {license}")
    if language:
        front.append(f"language: {language}")
    if finetuned_from:
        front.append(f"base_model: {finetuned_from}")
    if dataset:
        front.append(f"datasets:\n- {dataset}")
    front.append("tags:\n" + "\n".join(f"- {t}" for t in all_tags))
    front.append("---")

    origin = f"a fine-tuned version of [{finetuned_from}]" if finetuned_from else "a BLIP VQA model"
    parts = [
        "\n".join(front),
        f"\n# {model_name}\n",
        f"This model is {origin} for visual question answering on retinal fundus images"
        + (f", trained on `{dataset}`" if dataset else "")
        + " with the retina-vqa recipe (`run_vqa.py`).\n",
        "## Results\n",
    ]
    for split, prefix in (("Evaluation", "eval_"), ("Test (predict)", "predict_")):
        table = _metrics_table(metrics, prefix)
        if table:
            parts.append(f"### {split}\n\n{table}")
        per_type = _per_type_table(metrics, prefix)
        if per_type:
            parts.append(
                f"Exact match per question type, next to a text-only baseline that answers each "
                f"question type with its most frequent training answer:\n\n{per_type}"
            )
        grading = _grading_table(metrics, prefix)
        if grading:
            parts.append(
                "Grading metrics of the diagnosis question, with 95% Wilson score intervals; an answer that is not "
                "a grade counts as wrong (the farthest grade for kappa, the wrong call for sensitivity and "
                f"specificity):\n\n{grading}"
            )
        points = _operating_point_table(metrics, prefix)
        if points:
            parts.append(
                "Referable DR at the operating points of `--operating_points`: thresholds on P(referable) (the summed "
                "probability of moderate, severe and proliferative DR) chosen on the validation split "
                f"(`operating_points.json`), an eye referred when its probability reaches the threshold:\n\n{points}"
            )
        reports = _report_table(metrics, prefix)
        if reports:
            parts.append(
                "Findings reports scored by their findings (`retina_vqa.metrics.findings`: a rule-based extractor "
                "reads the findings, with negation, the impression and the recommendation from the generated and "
                "the reference report), next to the text-only baseline that writes the most common training report:"
                f"\n\n{reports}"
            )
        ranking = _ranking_table(metrics, prefix)
        if ranking:
            parts.append(
                "Ranked answers (`--answer_mode rank/auto`): questions of the types with known answers "
                "(`answer_candidates.json`) get the most likely of them, each candidate a probability; the reliability "
                f"plot is `calibration.png`.{_ranking_note(metrics, prefix)}"
                f"\n\n{ranking}"
            )
    if not metrics:
        parts.append("No evaluation was run.\n")
    if prompt_template is None:
        usage = USAGE.format(repo=repo)
    else:
        cut = (
            "answer_ids = out[0, inputs.input_ids.shape[1]:]  # the model returns the prompt first"
            if decoder_only
            else "answer_ids = out[0]"
        )
        usage = PROMPT_USAGE.format(repo=repo, prompt=prompt_template, cut=cut)
    if adapter_base:
        usage = ADAPTER_USAGE.format(base=adapter_base, repo=repo) + usage
    parts.append("## How to use\n\n" + usage)
    hyper = {
        name: getattr(training_args, name, None)
        for name in (
            "learning_rate",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "max_steps",
            "warmup_steps",
            "weight_decay",
            "lr_scheduler_type",
            "seed",
            "bf16",
            "fp16",
            "generation_max_length",
            "generation_num_beams",
            "group_by_image",
            "max_questions_per_image",
            "image_loss_weight",
            "patch_dropout",
        )
    }
    if augment is not None:
        hyper["augment"] = augment
    parts.append(
        "## Training settings\n\n| setting | value |\n| --- | --- |\n"
        + "\n".join(f"| {k} | {v} |" for k, v in hyper.items() if v is not None)
        + "\n"
    )
    train_logs = [entry for entry in log_history if "loss" in entry]
    if train_logs:
        last = train_logs[-1]
        parts.append(f"Final training loss {_format(last['loss'])} at step {last.get('step')}.\n")
    parts.append(
        "## Limitations\n\nA research model. It is not a medical device and must not be used for "
        "diagnosis. Metrics on synthetic data say nothing about clinical performance.\n"
    )
    return "\n".join(parts)
