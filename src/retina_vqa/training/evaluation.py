"""How a run evaluates and predicts, from its flags: candidate lists and each row's list, rows in answering order,
the collator, the metrics, temperature scaling, and the answers written to ``predictions.jsonl``.

run_vqa.py calls these in its phases; what they put together lives below (`answering`, `data`, `metrics`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
from datasets import Dataset

from ..answering.candidates import ANSWER_SET_COLUMN, AnswerCandidates, candidates_for_run
from ..answering.plan import RankingPlan, WithAnswerSets
from ..answering.records import (
    dataset_summary,
    graded_diagnosis_rows,
    in_row_order,
    prediction_records,
    ranked_answers,
    write_cross_dataset_table,
    write_predictions,
)
from ..arguments import DataTrainingArguments, ModelArguments, VqaTrainingArguments
from ..data.augment import FundusAugmentation, describe
from ..data.collator import PromptCollator, VqaCollator
from ..data.image_cache import DecodedImageCache
from ..data.ordering import answering_order
from ..data.preprocessing import IMAGE_KEY
from ..metrics import build_compute_metrics, decode_ids
from ..metrics.calibration import (
    calibration_metrics,
    fit_temperatures,
    probabilities,
    referable_probability,
)
from ..metrics.grading import REFERABLE_FROM_GRADE, answer_grades
from ..metrics.screening import (
    OperatingPoint,
    apply_operating_points,
    choose_operating_points,
    grade_probabilities,
    macro_ovr_auroc,
    parse_operating_points,
    patient_screening_metrics,
    save_operating_points,
)
from ..models.family import Family
from ..questions import DIAGNOSIS_ANSWERS

logger = logging.getLogger(__name__)

EVALUATED = ("do_eval", "do_predict")


def metric_columns(data_args: DataTrainingArguments) -> dict[str, str]:
    return {
        "answer_column": data_args.answer_column,
        "question_type_column": data_args.question_type_column,
        "answer_type_column": data_args.answer_type_column,
    }


def run_candidates(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: VqaTrainingArguments,
    raw_datasets: Any,
) -> AnswerCandidates | None:
    """The known answers of each question type (training split, or ``--answer_list``), saved with the model so that
    predict and the app can rank them; None when the run neither trains nor ranks."""
    if not (training_args.do_train or training_args.answer_mode != "generate"):
        return None
    candidates = candidates_for_run(
        training_args.answer_list,
        raw_datasets.get(data_args.train_split),
        model_args.model_name_or_path,
        training_args.max_candidate_answers,
        training=training_args.do_train,
        question_column=data_args.question_column,
        answer_column=data_args.answer_column,
        question_type_column=data_args.question_type_column,
        answer_type_column=data_args.answer_type_column,
    )
    if candidates is None and training_args.answer_mode != "generate":
        raise ValueError(
            f"--answer_mode {training_args.answer_mode} ranks known answers, but there is no training split "
            f"({data_args.train_split!r}) to take them from and no --answer_list: pass --answer_list FILE."
        )
    return candidates


def add_answer_sets(
    prepared: dict[str, Dataset],
    candidates: AnswerCandidates | None,
    processor: Any,
    family: Family,
    data_args: DataTrainingArguments,
    training_args: VqaTrainingArguments,
) -> RankingPlan | None:
    """With ``--answer_mode rank/auto``: the ranking plan, and on each evaluated split the list every row is ranked
    against (column ``answer_set``, -1: generated), added before the rows are reordered. None when generating."""
    if training_args.answer_mode == "generate":
        return None
    # Candidates are cut as training cut answers (BLIP: [DEC] + answer + [SEP] in max_answer_length tokens).
    plan = RankingPlan.build(
        candidates,
        processor,
        family.layout,
        max_target_tokens=family.answer_tokens(data_args.max_answer_length),
        top_k=training_args.rank_top_k,
    )
    for task in EVALUATED:
        if task in prepared:
            wanted = [c for c in (data_args.question_column, data_args.question_type_column) if c]
            rows = prepared[task].select_columns([c for c in wanted if c in prepared[task].column_names]).to_dict()
            row_sets = plan.row_sets(
                candidates,
                rows[data_args.question_column],
                rows.get(data_args.question_type_column),
                training_args.answer_mode,
            )
            prepared[task] = prepared[task].add_column(ANSWER_SET_COLUMN, row_sets)
            logger.info("%s: %d of %d rows ranked", task[3:], sum(s >= 0 for s in row_sets), len(row_sets))
    return plan


def put_in_answering_order(prepared: dict[str, Dataset], question_column: str) -> dict[str, list[int]]:
    """Evaluated sets in answering order: questions with the same text (answers of similar length) batched
    together, chunk of images by chunk. Returns ``{task: order}``, ``order[i]`` the split row of prepared row i."""
    orders = {}
    for task in EVALUATED:
        if task in prepared:
            columns = prepared[task].select_columns([IMAGE_KEY, question_column]).to_dict()
            orders[task] = answering_order(columns[IMAGE_KEY], columns[question_column])
            prepared[task] = prepared[task].select(orders[task])
    return orders


def build_collator(
    family: Family,
    processor: Any,
    data_args: DataTrainingArguments,
    training_args: VqaTrainingArguments,
    ranking: bool,
) -> Any:
    """The family's collator (pixels, padding, targets per batch; decoded images kept per
    ``--decoded_image_cache_gb``, training and evaluation batches sharing them); with `ranking`, evaluation batches
    also carry each row's candidate list."""
    pad_to_multiple_of = data_args.pad_to_multiple_of or (8 if training_args.device.type == "cuda" else None)
    cache = DecodedImageCache.per_process(data_args.decoded_image_cache_gb, training_args.dataloader_num_workers)
    if family.is_blip:
        collator = VqaCollator(
            image_processor=processor.image_processor,
            pad_token_id=processor.tokenizer.pad_token_id,
            image_column=data_args.image_column,
            max_image_side=data_args.max_image_side,
            pad_to_multiple_of=pad_to_multiple_of,
            return_image_keys=True,  # for the image-encoder outputs the Trainer keeps (evaluation, frozen encoder)
            image_cache=cache,
        )
    else:
        collator = PromptCollator.from_layout(
            family.layout,
            processor.image_processor,
            image_column=data_args.image_column,
            max_image_side=data_args.max_image_side,
            pad_to_multiple_of=pad_to_multiple_of,
            image_cache=cache,
        )
    return WithAnswerSets(collator) if ranking else collator


def build_train_collator(
    collator: Any,
    data_args: DataTrainingArguments,
    training_args: VqaTrainingArguments,
    orientation_targets: tuple[int, ...] = (),
) -> Any:
    """With ``--augment``: the collator of training batches, `collator` (what evaluation and prediction use, the
    Trainer's ``data_collator``) with the augmentation added, seeded by the run's seed and process; None without it
    (training uses `collator` too). ``orientation_targets``: the image objective's label columns a flip clears
    (`training.image_objective.ImageTargets.orientation_columns`)."""
    if not data_args.augment:
        return None
    inner = collator.collator if isinstance(collator, WithAnswerSets) else collator  # training ranks nothing
    augmentation = FundusAugmentation(
        seed=training_args.seed,
        process_index=training_args.process_index,
        flip_probability=data_args.augment_flip_probability,
    )
    logger.info("Augmenting training images: %s", describe(augmentation))
    return dataclasses.replace(
        inner,
        augment=augmentation,
        question_type_column=data_args.question_type_column,
        orientation_targets=tuple(orientation_targets),
    )


def build_metrics(
    tokenizer: Any,
    dataset: Dataset | None,
    data_args: DataTrainingArguments,
    plan: RankingPlan | None,
    temperatures: dict[str, float] | None = None,
) -> Any:
    """`compute_metrics` of an evaluated set (scored against its raw answer strings), with the calibration numbers
    of its ranked rows (ECE, referable-DR AUC) when the run ranks; None without a set."""
    if dataset is None:
        return None
    compute_metrics = build_compute_metrics(tokenizer, dataset, **metric_columns(data_args))
    if plan is None:
        return compute_metrics
    return plan.metrics(
        compute_metrics, dataset, data_args.answer_column, data_args.question_type_column, temperatures=temperatures
    )


def calibrate(compute_metrics: Any, candidates: AnswerCandidates) -> dict[str, float]:
    """``--calibrate``: temperatures fitted on the validation split's candidate scores (kept in `candidates`, saved
    with the model), and the validation numbers with them, in-sample (the test split's are not)."""
    rows = getattr(compute_metrics, "last_rows", None) or []
    candidates.temperatures.update(fit_temperatures(rows))
    calibrated = calibration_metrics(rows, candidates.temperatures)
    return {f"eval_{k}": v for k, v in calibrated.items() if "_calibrated" in k or "temperature/" in k}


def write_run_predictions(
    output: Any,
    predicted: Dataset,
    split: Dataset,
    order: list[int] | None,
    tokenizer: Any,
    data_args: DataTrainingArguments,
    plan: RankingPlan | None,
    candidates: AnswerCandidates | None,
    output_dir: str,
) -> list[dict[str, Any]]:
    """``predictions.jsonl``: every row of `split` once, in row order, next to its reference; ranked rows with the
    chosen candidate and every candidate's probability. `predicted` is the set as answered (in `order`)."""
    answers = in_row_order(decode_ids(tokenizer, output.predictions), order)
    answer_scores = None
    if plan is not None:
        scores = in_row_order(list(output.predictions[1]), order)
        row_sets = in_row_order(predicted.select_columns([ANSWER_SET_COLUMN]).to_dict()[ANSWER_SET_COLUMN], order)
        answers, answer_scores = ranked_answers(answers, scores, row_sets, candidates, plan)
    records = prediction_records(
        split, answers, data_args.question_column, data_args.answer_column, answer_scores=answer_scores
    )
    write_predictions(os.path.join(output_dir, "predictions.jsonl"), records)
    return records


def write_run_table(
    records: list[dict[str, Any]],
    predicted: Dataset,
    order: list[int] | None,
    split: Dataset,
    data_args: DataTrainingArguments,
    points: list[OperatingPoint] | None,
    output_dir: str,
) -> str:
    """The run's row of the cross-dataset table (`answering.records.dataset_summary`: exact match, ungradable rates,
    QWK, macro AUROC, referable DR per eye and per patient, the saved operating points), written as
    ``cross_dataset-<split>.md`` / ``.json`` in `output_dir`, the files ``python -m retina_vqa.predict
    --dataset_dir A B C`` writes for several datasets; returns the table. `predicted`: the split as answered
    (in `order`), whose image keys say which rows share an image."""
    keys = in_row_order(predicted.select_columns([IMAGE_KEY]).to_dict()[IMAGE_KEY], order)
    patients = None
    if data_args.patient_column in split.column_names:
        patients = split.select_columns([data_args.patient_column]).to_dict()[data_args.patient_column]
    name = data_args.dataset_name or data_args.dataset_dir or data_args.test_file or "test"
    summary = dataset_summary(f"{name} ({data_args.test_split})", records, patients, points, keys)
    return write_cross_dataset_table([summary], os.path.join(output_dir, f"cross_dataset-{data_args.test_split}"))


def patient_metrics(
    records: list[dict[str, Any]], split: Dataset, data_args: DataTrainingArguments, prefix: str
) -> dict[str, float]:
    """With a patient column (``--patient_column``): the diagnosis rows' referable / any-DR sensitivity and
    specificity per patient, worse eye (`metrics.screening.patient_screening_metrics`), as
    ``<prefix>_diagnosis_patient_*``; the eyes whose reference says ungradable are left out
    (`answering.records.graded_diagnosis_rows`). Empty without patients or diagnosis rows."""
    if data_args.patient_column not in split.column_names:
        return {}
    patients = split.select_columns([data_args.patient_column]).to_dict()[data_args.patient_column]
    rows = graded_diagnosis_rows(records)
    if not rows:
        return {}
    metrics = patient_screening_metrics(
        [records[i]["reference"] for i in rows],
        [records[i]["prediction"] for i in rows],
        [patients[i] for i in rows],
        DIAGNOSIS_ANSWERS,
    )
    return {f"{prefix}_diagnosis_{k}": v for k, v in metrics.items()}


def diagnosis_scores(
    compute_metrics: Any, temperatures: dict[str, float] | None, diagnosis_type: str = "diagnosis"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ranked diagnosis rows of the last evaluation whose reference is a grade, on gradable images (rows of an
    image whose reference quality answer is "no" are left out): ``(P(referable), referable, grade probabilities
    (rows x 5, ICDR order), grades)``, at the saved temperatures. Empty without ranked rows."""
    p, labels, grade_probs, grades = [], [], [], []
    for row in getattr(compute_metrics, "last_rows", None) or []:
        (grade,) = answer_grades([row.reference or ""])
        if row.group != diagnosis_type or grade < 0 or not row.gradable:
            continue
        probs = probabilities(row.scores, (temperatures or {}).get(row.set_name, 1.0))
        p.append(referable_probability(row.answers, probs))
        labels.append(grade >= REFERABLE_FROM_GRADE)
        grade_probs.append(grade_probabilities(row.answers, probs))
        grades.append(grade)
    return np.array(p), np.array(labels, dtype=bool), np.array(grade_probs).reshape(-1, 5), np.array(grades, dtype=int)


def screening_metrics(
    compute_metrics: Any,
    temperatures: dict[str, float] | None,
    prefix: str,
    operating_points: str | None = None,
    points: list[OperatingPoint] | None = None,
    output_dir: str | None = None,
) -> tuple[dict[str, float], list[OperatingPoint] | None]:
    """The screening numbers of the last evaluation's ranked diagnosis rows: macro one-vs-rest AUROC over the five
    grades (``<prefix>_diagnosis_macro_auroc``); with `operating_points` (``--operating_points``, on the validation
    split) thresholds on P(referable) fitted on these rows and saved to `output_dir` (``operating_points.json``);
    with `points` (fitted before) their sensitivity and specificity on these rows. Returns ``(metrics, points)``."""
    p, labels, grade_probs, grades = diagnosis_scores(compute_metrics, temperatures)
    metrics: dict[str, float] = {}
    if not len(p):
        if operating_points:
            raise ValueError(
                "--operating_points needs ranked diagnosis answers with grade references on the validation split: "
                "use --answer_mode rank or auto on a split with a diagnosis question."
            )
        return metrics, points
    macro, per_grade = macro_ovr_auroc(grade_probs, grades)
    if not np.isnan(macro):
        metrics[f"{prefix}_diagnosis_macro_auroc"] = macro
        metrics.update({f"{prefix}_diagnosis_auroc/{DIAGNOSIS_ANSWERS[g]}": v for g, v in per_grade.items()})
    if operating_points:
        points = choose_operating_points(p, labels, parse_operating_points(operating_points))
        if output_dir is not None:
            save_operating_points(points, output_dir)
    if points:
        metrics.update({f"{prefix}_{k}": v for k, v in apply_operating_points(points, p, labels).items()})
    return metrics, points


def fit_ood_guard(trainer: Any, processor: Any, data_args: DataTrainingArguments, max_images: int) -> dict[str, float]:
    """``--fit_ood_guard``: the out-of-distribution guard of the model the run hands over (`retina_vqa.ood`), fitted
    on the training and validation images of ``--dataset_dir`` and saved with it (main process); its numbers."""
    from ..ood import fit_for_model

    if not data_args.dataset_dir:
        raise ValueError("--fit_ood_guard reads the training and validation images of --dataset_dir: add it.")
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    guard = fit_for_model(
        model,
        processor,
        data_args.dataset_dir,
        data_args.train_split,
        data_args.validation_split,
        max_images=max_images,
        image_column=data_args.image_column,
    )
    guard.save(trainer.args.output_dir)
    return {"ood_guard_threshold": float(guard.threshold), "ood_guard_train_images": int(guard.num_train)}
