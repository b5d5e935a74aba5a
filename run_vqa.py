#!/usr/bin/env python
"""Fine-tune BLIP VQA, BLIP-2 or InstructBLIP for visual question answering on retinal fundus images.

    accelerate launch run_vqa.py configs/demo.yaml
    accelerate launch run_vqa.py --model_name_or_path Salesforce/blip-vqa-base --dataset_dir RetinaVQA \\
        --output_dir outputs/blip-retina --do_train --do_eval --do_predict --bf16

Runs the same on CPU, one GPU, or many GPUs/nodes: accelerate picks the devices. A `.yaml` or `.json`
first argument is read as a config file (later flags override it). The logic lives in `src/retina_vqa/`;
this script wires it.
"""

from __future__ import annotations

import logging
import os
import sys

import datasets
import transformers
from transformers import set_seed

from retina_vqa.arguments import VqaTrainingArguments, choose_precision, parse_args
from retina_vqa.data.loading import load_raw_datasets, rows_to_validate, select_task_splits
from retina_vqa.data.preprocessing import prepare_split
from retina_vqa.data.validation import drop_invalid, validate_on_all_processes
from retina_vqa.models.lora import check_activation_checkpointing, merge_lora, parameter_counts
from retina_vqa.plots import plot_run
from retina_vqa.training.checkpoints import detect_last_checkpoint
from retina_vqa.training.embedding_cache import ImageEmbeddingCache
from retina_vqa.training.evaluation import (
    add_answer_sets,
    build_collator,
    build_metrics,
    build_train_collator,
    calibrate,
    fit_ood_guard,
    metric_columns,
    patient_metrics,
    put_in_answering_order,
    run_candidates,
    screening_metrics,
    write_run_predictions,
    write_run_table,
)
from retina_vqa.training.image_objective import ImageTargets, attach_image_head, detach_image_head
from retina_vqa.training.model_setup import load_family, load_processor, load_training_model
from retina_vqa.training.outputs import prior_metrics
from retina_vqa.training.patch_dropout import attach_patch_dropout, detach_patch_dropout
from retina_vqa.training.trainer import VqaTrainer

logger = logging.getLogger(__name__)


def setup_logging(training_args: VqaTrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("retina_vqa").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments and logging.
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    logger.warning(
        "Process rank %s, device %s, n_gpu %s, distributed %s, bf16 %s",
        training_args.process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.bf16,
    )
    logger.info("Training/evaluation parameters %s", training_args)
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ValueError("Nothing to do: pass at least one of --do_train, --do_eval, --do_predict.")
    if training_args.calibrate and not training_args.do_eval:
        raise ValueError("--calibrate fits temperatures on the validation split: add --do_eval.")

    # 2. Last checkpoint, seed.
    last_checkpoint = detect_last_checkpoint(
        training_args.output_dir,
        training_args.do_train,
        training_args.overwrite_output_dir,
        training_args.resume_from_checkpoint,
    )
    set_seed(training_args.seed)

    # 3. Data: load, check splits and columns; the processor; the text tokenised once (cached: the main process
    # goes first so the others read its cache).
    raw_datasets = load_raw_datasets(data_args, model_args)
    tasks = {
        "do_train": training_args.do_train,
        "do_eval": training_args.do_eval,
        "do_predict": training_args.do_predict,
    }
    selected = select_task_splits(raw_datasets, data_args, tasks)
    splits = {task: dataset for task, (_, dataset) in selected.items()}
    processor = load_processor(model_args)
    tokenizer = processor.tokenizer
    # The family (BLIP VQA, BLIP-2, InstructBLIP) and what differs between them; BLIP-2 / InstructBLIP: the <image>
    # placeholders and the prompt (family.layout, None for BLIP VQA).
    family = load_family(model_args, processor)
    layout = family.layout
    choose_precision(training_args, family.name)
    if training_args.image_loss_weight and (model_args.lora_r or model_args.cache_image_embeddings):
        raise ValueError(
            "--image_loss_weight trains the image encoder through a classifier on its states: not with "
            f"{'--lora_r (adapters only)' if model_args.lora_r else '--cache_image_embeddings (kept states)'}. "
            "Drop one of them."
        )
    if training_args.patch_dropout and model_args.cache_image_embeddings:
        raise ValueError(
            "--patch_dropout trains the image encoder on part of each image's patches, while --cache_image_embeddings "
            "keeps whole images' encoder outputs: drop one of them."
        )
    check_activation_checkpointing(
        family.name,
        model_args.lora_r,
        training_args.activation_checkpointing,
        training_args.activation_checkpointing_kwargs,
    )
    # Saved with the processor: plain transformers and retina_vqa.predict truncate questions as training did.
    for text_tokenizer in (tokenizer, getattr(processor, "qformer_tokenizer", None)):
        if text_tokenizer is not None:
            text_tokenizer.model_max_length = data_args.max_question_length
    prepared: dict[str, datasets.Dataset] = {}
    with training_args.main_process_first(desc="tokenising questions and answers"):
        for task, dataset in splits.items():
            prepared[task] = prepare_split(dataset, processor, data_args, True, task[3:], family)

    # 4. Every row validated before any model is built (each image once, shared between processes; a dataset
    # validated before with the same settings is not validated again).
    report = validate_on_all_processes(
        rows_to_validate({task: (selected[task][0], dataset) for task, dataset in prepared.items()}),
        image_column=data_args.image_column,
        question_column=data_args.question_column,
        answer_column=data_args.answer_column,
        tokenizer=tokenizer,
        max_answer_length=data_args.max_answer_length,
        train_split=data_args.train_split,
    )
    if report.problems and not data_args.skip_invalid_examples:
        raise ValueError(report.format() + "\nFix these rows, or pass --skip_invalid_examples to train without them.")
    if report.problems:
        logger.warning("Dropping invalid rows: %s", report.counts())
        for task, (split, _) in selected.items():
            splits[task] = drop_invalid(splits[task], report.bad_rows(split))
            prepared[task] = drop_invalid(prepared[task], report.bad_rows(split))
    results: dict[str, float] = dict(report.counts())

    # 5. Model (with LoRA adapters under --lora_r); the answer length and beams of evaluation saved with it.
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_answer_length
    model = load_training_model(
        model_args,
        processor,
        family,
        training_args.generation_max_length,
        training_args.generation_num_beams or 1,
        data_args.prompt_template,
    )
    results.update(parameter_counts(model))
    if training_args.patch_dropout and training_args.do_train:
        attach_patch_dropout(model, training_args.patch_dropout)  # training-mode forwards only

    # 6. Answering: the candidate lists (saved with the model) and, with --answer_mode rank/auto, the list of each
    # evaluated row; evaluated rows in answering order (`orders[task][i]`: the split row of prepared row i); the
    # collator and the metrics (scored against the raw answer strings of the evaluated rows).
    candidates = run_candidates(model_args, data_args, training_args, raw_datasets)
    plan = add_answer_sets(prepared, candidates, processor, family, data_args, training_args)
    orders = put_in_answering_order(prepared, data_args.question_column) if training_args.group_eval_by_question else {}
    orientation: tuple[int, ...] = ()
    if training_args.image_loss_weight and training_args.do_train:
        # The image-level objective: every training row carries its image's closed answers, classified from the
        # image encoder's [CLS]; a flip (--augment) clears the eye's side.
        targets = ImageTargets.from_candidates(candidates)
        prepared["do_train"] = targets.add_to(prepared["do_train"], candidates, data_args)
        attach_image_head(model, targets, training_args.image_loss_weight)
        orientation = targets.orientation_columns()
    collator = build_collator(family, processor, data_args, training_args, ranking=plan is not None)
    # --augment: training batches get a collator of their own; evaluation and prediction see the images as they are.
    train_collator = (
        build_train_collator(collator, data_args, training_args, orientation) if training_args.do_train else None
    )
    eval_dataset = prepared.get("do_eval")
    compute_metrics = build_metrics(tokenizer, eval_dataset, data_args, plan)

    # 7. Trainer (the hooks it overrides are checked against transformers first).
    trainer = VqaTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared.get("do_train"),
        eval_dataset=eval_dataset,
        processing_class=processor,
        data_collator=collator,
        train_data_collator=train_collator,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
        image_embedding_cache=(
            ImageEmbeddingCache(int(model_args.image_embedding_cache_gb * 1e9))
            if model_args.cache_image_embeddings
            else None
        ),
        family=family,
        ranking_plan=plan,
        answer_candidates=candidates,
    )
    if report.problems:
        trainer.save_metrics("data_validation", report.counts())
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if training_args.fit_ood_guard and (sharded or trainer.is_deepspeed_enabled):
        raise ValueError(
            "--fit_ood_guard encodes images on the main process, which sharded parameters (FSDP, DeepSpeed) do not "
            "allow: fit the guard on the saved model afterwards with `python -m retina_vqa.ood fit`."
        )
    if training_args.image_loss_weight and sharded:
        raise ValueError(
            "--image_loss_weight adds a classifier that is removed from the model before it is saved, which sharded "
            "parameters (FSDP, DeepSpeed) do not allow: train it with DDP or one process, or drop the flag."
        )
    if model_args.lora_r and training_args.push_to_hub and sharded:
        raise ValueError(
            "--push_to_hub with --lora_r under FSDP or DeepSpeed: the engine keeps the adapter model, so the push "
            "could not hand over the merged one. Train without --push_to_hub and upload the output folder (merged "
            "at the end of the run) with `huggingface-cli upload`, or train with DDP."
        )

    # 8. Train.
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        detach_image_head(trainer.model)  # the model handed over is the plain model (checkpoints keep the head)
        detach_patch_dropout(trainer.model)
        # Also saves the processor. With LoRA: the adapter, in adapter/; the folder itself gets the model handed over:
        # merged (from here on evaluated, predicted and pushed as such) or, with --merge_lora false, the adapter.
        # _internal_call: no push per save (upstream pushes on every save_model); the run pushes once, at its end.
        trainer.save_model(os.path.join(training_args.output_dir, "adapter") if model_args.lora_r else None, True)
        metrics = dict(train_result.metrics, train_samples=len(prepared["do_train"]), **parameter_counts(model))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update({f"train_{k}" if not k.startswith("train_") else k: v for k, v in metrics.items()})
        if model_args.lora_r and not (model_args.merge_lora and sharded):
            if model_args.merge_lora:
                trainer.hand_over_merged()
            trainer.save_model(None, True)

    # The question-prior baseline needs the training answers: it shows which questions need the image.
    prior_train = splits.get("do_train")
    if prior_train is None and data_args.train_split in raw_datasets:
        prior_train = raw_datasets[data_args.train_split]
    prior_columns = {"question_column": data_args.question_column, **metric_columns(data_args)}

    # 9. Evaluate.
    points = None
    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(eval_dataset)
        metrics.update(prior_metrics(prior_train, splits["do_eval"], "eval", **prior_columns))
        if training_args.calibrate:  # temperatures fitted on these rows: in-sample numbers
            metrics.update(calibrate(compute_metrics, candidates))
        # Ranked diagnosis: macro AUROC; --operating_points: thresholds fitted here, saved with the model.
        temperatures = candidates.temperatures if plan is not None else None
        screening, points = screening_metrics(
            compute_metrics,
            temperatures,
            "eval",
            training_args.operating_points,
            output_dir=training_args.output_dir if trainer.is_world_process_zero() else None,
        )
        metrics.update(screening)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)

    # 10. Predict: answers for every test question, written next to their references; the saved operating points.
    if training_args.do_predict:
        predict_dataset = prepared["do_predict"]
        temperatures = candidates.temperatures if plan is not None else None
        trainer.compute_metrics = build_metrics(tokenizer, predict_dataset, data_args, plan, temperatures)
        output = trainer.predict(predict_dataset, metric_key_prefix="predict")
        metrics = dict(output.metrics, predict_samples=len(predict_dataset))
        metrics.update(prior_metrics(prior_train, splits["do_predict"], "predict", **prior_columns))
        metrics.update(screening_metrics(trainer.compute_metrics, temperatures, "predict", points=points)[0])
        if trainer.is_world_process_zero() and training_args.predict_with_generate:
            records = write_run_predictions(
                output,
                predict_dataset,
                splits["do_predict"],
                orders.get("do_predict"),
                tokenizer,
                data_args,
                plan,
                candidates,
                training_args.output_dir,
            )
            metrics.update(patient_metrics(records, splits["do_predict"], data_args, "predict"))
            # The cross-dataset table's row of this split, as `python -m retina_vqa.predict --dataset_dir A B C`
            # writes it for several datasets (with this model: its saved operating points).
            print(write_run_table(
                records, predict_dataset, orders.get("do_predict"), splits["do_predict"], data_args, points,
                training_args.output_dir,
            ))  # fmt: skip
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        results.update(metrics)

    if candidates is not None and trainer.is_world_process_zero():  # with the temperatures, once fitted
        candidates.save(training_args.output_dir)

    if trainer.image_embedding_cache is not None:
        # This process's counts: how often the frozen image encoder ran, and how often it was spared.
        stats = trainer.image_embedding_cache.stats()
        trainer.log_metrics("image_embedding_cache", stats)
        trainer.save_metrics("image_embedding_cache", stats, combined=False)
        results.update(stats)

    # LoRA under FSDP / DeepSpeed: the merged model, which loads and answers without peft, saved at the end.
    if (
        model_args.lora_r
        and model_args.merge_lora
        and sharded
        and training_args.do_train
        and trainer.is_world_process_zero()
    ):
        merged = merge_lora(trainer.model)
        merged.save_pretrained(training_args.output_dir)
        processor.save_pretrained(training_args.output_dir)

    # The out-of-distribution guard of the handed-over model, saved with it (--fit_ood_guard).
    if training_args.fit_ood_guard and trainer.is_world_process_zero():
        guard = fit_ood_guard(trainer, processor, data_args, training_args.ood_guard_max_images)
        trainer.save_metrics("ood_guard", guard)
        results.update(guard)

    # Pictures of the run next to its numbers: curves.png, confusion.png, samples.png (main process only).
    if data_args.plot and trainer.is_world_process_zero():
        plot_run(training_args.output_dir, splits.get("do_predict"), image_column=data_args.image_column)

    # 11. Model card, hub.
    card = {
        "finetuned_from": model_args.model_name_or_path,
        "dataset": data_args.dataset_name or data_args.dataset_dir or data_args.train_file,
        "tasks": "visual-question-answering",
        "augment": data_args.augment if training_args.do_train else None,
    }
    if not family.is_blip:  # BLIP-2 / InstructBLIP: the usage snippet needs the prompt
        card.update(prompt_template=data_args.prompt_template, decoder_only=layout.decoder_only)
    trainer.card_info = card
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return results


if __name__ == "__main__":
    main()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Several processes (accelerate launch, torchrun): leave the process group before the interpreter exits;
        # torn down at exit instead, its communication threads could abort a finished run ("terminate called").
        dist.destroy_process_group()
