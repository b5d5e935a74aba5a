"""The Seq2Seq-style Trainer of the recipe: masked batched generation for evaluation and our model card."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import logging
import os
import types
from typing import Any

import torch
from peft import PeftModel
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel, StateDictType, register_fsdp_forward_method
from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer

from ..answering.candidates import ANSWER_SET_COLUMN, AnswerCandidates
from ..answering.plan import RankingPlan
from ..answering.step import answer_rows
from ..data.preprocessing import IMAGE_KEY
from ..data.sampling import ImageGroupedSampler
from ..models.blip import generate_answers
from ..models.blip2 import generate_prompt_answers
from ..models.compat import (
    allow_fsdp_on_cpu_processes,
    check_trainer_hooks,
    hf_api,
    is_deepspeed_zero3_enabled,
    is_fsdp_managed_module,
)
from ..models.family import Family
from ..models.lora import merge_lora
from .checkpoints import last_complete_checkpoint
from .embedding_cache import ImageEmbeddingCache
from .image_objective import HEAD_NAME, image_states_of
from .model_card import render_model_card

logger = logging.getLogger(__name__)

# CPU memory for the image-encoder outputs kept during one evaluation (blip-vqa-base at 384 px: ~1.8 MB an
# image in fp32, so ~1,100 images; the oldest are dropped beyond it).
EVALUATION_CACHE_BYTES = 2 * 10**9

# The two layouts a model folder (and its hub repository) can have, and the folder of a LoRA run's adapter. A folder
# holds one layout: an adapter_config.json beside a full model makes `from_pretrained` load the adapter's base model.
# Both keep config.json: AutoProcessor and AutoConfig read it, and for a hub id from_pretrained still loads an
# adapter's base model from adapter_config.json.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model*.bin",
)
ADAPTER_FOLDER = "adapter"


def other_layout_files(adapter: bool) -> list[str]:
    """Patterns of the files a folder holding the other layout has, and of the adapter/ copy: none of them belongs
    in a folder (or repository) that holds a model (``adapter=False``) or an adapter (``adapter=True``)."""
    return [*(MODEL_FILES if adapter else ADAPTER_FILES), f"{ADAPTER_FOLDER}/*"]


def remove_other_layout(folder: str, adapter: bool) -> list[str]:
    """Delete from `folder`'s top level what `other_layout_files` names (left there by checkpoint pushes, which copy
    a checkpoint's files up, or by an earlier run); the names deleted."""
    if not os.path.isdir(folder):
        return []
    patterns = [p for p in other_layout_files(adapter) if "/" not in p]
    removed = sorted(n for n in os.listdir(folder) if any(fnmatch.fnmatch(n, p) for p in patterns))
    for name in removed:
        os.remove(os.path.join(folder, name))
    return removed


# Sizes that change from batch to batch: distinct images, rows (questions), question and answer lengths.
DYNAMIC_DIMS = {
    "pixel_values": (0,),
    "image_embeds": (0,),
    "image_index": (0,),
    "image_targets": (0,),
    "input_ids": (0, 1),
    "attention_mask": (0, 1),
    "decoder_input_ids": (0, 1),
    "decoder_attention_mask": (0, 1),
    "labels": (0, 1),
}


def mark_batch_dynamic(inputs: dict[str, Any]) -> None:
    """Tell torch.compile up front which sizes vary, so that it compiles one graph for every batch.

    Dynamic padding and image sharing give every batch its own question length, answer length and number
    of distinct images. Left alone, dynamo compiles for the first batch's exact sizes and recompiles when they
    change (twice, before it turns them dynamic). Dynamo still specialises sizes of 1, so a batch holding
    the questions of a single image, or a last batch of one question, gets one more graph of its own: two
    or three graphs in all, however many shapes the batches have. (Marking the image count "unbacked" to
    avoid that breaks inductor's convolution in torch 2.13.)
    """
    for name, dims in DYNAMIC_DIMS.items():
        tensor = inputs.get(name)
        if isinstance(tensor, torch.Tensor):
            for dim in dims:
                if dim < tensor.dim():
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)


class VqaTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose `predict_with_generate` answers with the real question mask.

    The stock `prediction_step` calls `model.generate(**inputs)`, which hands the labels to BLIP's
    decoder `generate` and ignores question padding. Here generation sees only pixels and the question;
    the loss is still computed from the full batch.

    With a `ranking_plan` (``--answer_mode rank/auto``), the rows whose ``answer_set`` names a candidate list are
    ranked instead (`models.ranking`): the chosen candidate's ids stand in for generated ones, and the predictions
    become ``(token ids, candidate scores)``, the scores padded to a fixed width so that they gather across
    processes like logits. `answer_candidates` are saved with the model and every checkpoint.

    `card_info` (set by the entry script) feeds the model card written by `create_model_card`, which
    `push_to_hub` also calls. With `image_embedding_cache` (a frozen image encoder), kept image-encoder
    outputs replace the pixels of images seen before; with ``--torch_compile`` the varying batch sizes are
    marked dynamic (`mark_batch_dynamic`). With `train_data_collator` (``--augment``) training batches are made by
    it and every evaluation and prediction batch by `data_collator`.
    """

    def __init__(
        self,
        *args,
        card_info: dict[str, Any] | None = None,
        image_embedding_cache: ImageEmbeddingCache | None = None,
        family: Family | None = None,
        ranking_plan: RankingPlan | None = None,
        answer_candidates: AnswerCandidates | None = None,
        train_data_collator: Any = None,
        **kwargs,
    ) -> None:
        check_trainer_hooks()  # the hooks overridden here must still exist upstream (models/compat.py)
        super().__init__(*args, **kwargs)
        self.train_data_collator = train_data_collator
        self.card_info: dict[str, Any] = card_info or {}
        if image_embedding_cache is not None and (self.is_fsdp_enabled or is_deepspeed_zero3_enabled()):
            raise ValueError(
                "--cache_image_embeddings runs the image encoder outside the model's forward, which parameter "
                "sharding (FSDP, DeepSpeed ZeRO-3) does not allow: use DDP or ZeRO-2, or drop the cache."
            )
        if image_embedding_cache is not None:
            # What trains decides, not the flags: any image-encoder parameter with a gradient (a LoRA adapter
            # included) would make the kept outputs stale.
            training = [n for n, p in self.model.named_parameters() if p.requires_grad and ".vision_model." in f".{n}"]
            if training:
                raise ValueError(
                    f"--cache_image_embeddings keeps the image encoder's outputs, but {len(training)} of its "
                    f"parameters train ({training[0]}, ...): the kept outputs would go stale. Freeze the whole encoder "
                    "(--freeze_vision_encoder, LoRA targets outside vision_model) or drop --cache_image_embeddings."
                )
        self.image_embedding_cache = image_embedding_cache
        self._evaluation_cache: ImageEmbeddingCache | None = None
        # BLIP-2 / InstructBLIP: where the image placeholders are; answers are generated from the prompts.
        self.family = family or Family("blip")
        self.prompt_layout = self.family.layout
        if ranking_plan is not None and (self.is_fsdp_enabled or is_deepspeed_zero3_enabled()):
            # Sharded parameters are gathered in collectives that every rank must join equally often, but how many
            # rows a rank ranks or generates depends on its batch.
            raise ValueError(
                "--answer_mode rank/auto is not available with parameter sharding (FSDP, DeepSpeed ZeRO-3): train "
                "with --answer_mode generate, then evaluate the saved model with DDP or one process, or rank with "
                "`python -m retina_vqa.predict --answer_mode auto`."
            )
        self.ranking_plan = ranking_plan
        self.answer_candidates = answer_candidates
        if self.is_fsdp_enabled or is_deepspeed_zero3_enabled():
            # Sharded weights are gathered per decoder call, and the number of answer-length groups varies per rank.
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            if hasattr(base, "decode_in_length_groups"):
                base.decode_in_length_groups = False

    def create_accelerator_and_postprocess(self) -> None:
        # An FSDP config on CPU processes would otherwise run as DDP (models/compat.py).
        requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(self.args.fsdp_plugin_args)
        allow_fsdp_on_cpu_processes(requested)
        super().create_accelerator_and_postprocess()

    def get_train_dataloader(self):
        # The Trainer builds every DataLoader from `data_collator`; the training one alone gets the training collator
        # (augmentation), swapped in for the time the DataLoader takes to build, so evaluation never sees it.
        if self.train_data_collator is None:
            return super().get_train_dataloader()
        shared, self.data_collator = self.data_collator, self.train_data_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = shared

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if (
            getattr(self.args, "group_by_image", False)
            and self.args.train_sampling_strategy == "random"
            and dataset is not None
            and IMAGE_KEY in getattr(dataset, "column_names", ())
            # Only a collator that sends each distinct image of a batch once gains from grouping.
            and getattr(self.data_collator, "share_images", False)
        ):
            return ImageGroupedSampler(
                dataset[IMAGE_KEY],
                seed=self.args.seed,
                max_questions_per_image=self.args.max_questions_per_image or None,
            )
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        # transformers shuffles evaluation rows into length groups under train_sampling_strategy group_by_length;
        # the recipe's metrics, prior, ranking plan and predictions.jsonl pair outputs with the dataset's rows by
        # position, so evaluation always runs in dataset order (one process: sequential; several: accelerate's
        # even split, which the gathered outputs undo).
        if eval_dataset is None or not hasattr(eval_dataset, "__len__"):  # an IterableDataset keeps its order
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        keys = inputs.pop("image_keys", None)
        cache = self.image_embedding_cache if self.image_embedding_cache is not None else self._evaluation_cache
        if cache is not None and keys is not None and "pixel_values" in inputs:
            # Kept image-encoder outputs replace the pixels (embedding_cache.py).
            with self.accelerator.autocast():
                inputs["image_embeds"] = cache.encode(
                    self.accelerator.unwrap_model(self.model), inputs.pop("pixel_values"), keys
                )
        if self.args.torch_compile:
            mark_batch_dynamic(inputs)
        return inputs

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not getattr(self, "_logged_wrapper", False):
            # What the run really is: accelerate falls back to DDP silently when it cannot shard (e.g.
            # `distributed_type: FSDP` with `use_cpu: true` before allow_fsdp_on_cpu_processes), so the log names it.
            self._logged_wrapper = True
            # A warning where it matters (several processes: what sharding, if any, engaged), else for the record.
            logger.log(
                logging.WARNING if self.args.world_size > 1 else logging.INFO,
                "Distributed setup: %s, FSDP enabled %s, model wrapped as %s",
                self.accelerator.distributed_type,
                self.is_fsdp_enabled,
                ", ".join(cls.__name__ for cls in type(model).__mro__[:3]),
            )
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Every rank learns whether any rank saw a non-finite loss, so all stop together (no hang in DDP).
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.accelerator.num_processes > 1:
            finite = self.accelerator.reduce(finite, reduction="mean")
        if finite.item() < 1.0:
            last = last_complete_checkpoint(self.args.output_dir)
            raise FloatingPointError(
                f"The training loss became {loss.item()} at step {self.state.global_step + 1}; stopping before "
                f"the weights are saved. Last good checkpoint: {last or 'none'}. Lower --learning_rate, raise "
                "--warmup_steps, set --max_grad_norm, or train in fp32/bf16 instead of fp16, then resume."
            )
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # --image_loss_weight: training batches carry each row's image labels; the image encoder's states of this
        # forward (caught on their way out of it) feed the head, whose loss joins the answer loss (image_objective).
        targets = inputs.pop("image_targets", None)
        head = getattr(self.accelerator.unwrap_model(model), HEAD_NAME, None)
        if targets is None or head is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with image_states_of(self.accelerator.unwrap_model(model)) as states:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        extra = head.loss(states.value, targets, inputs.get("image_index"), num_items_in_batch)
        if (
            self.args.average_tokens_across_devices
            and (self.model_accepts_loss_kwargs or self.compute_loss_func)
            and num_items_in_batch is not None
        ):  # as upstream scales the answer loss: num_items_in_batch counts the tokens of every process
            extra = extra * self.accelerator.num_processes
        loss = loss + extra
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(self, *args, **kwargs):
        # Seq2SeqTrainer.evaluate/predict switch to `accelerator.gather`, which keeps the samples that
        # the distributed sampler repeats to even out the last batch: with N processes and a set size
        # not divisible by the batch, examples are counted twice. `gather_for_metrics` drops them.
        self.gather_function = functools.partial(
            self.accelerator.gather_for_metrics, use_gather_object=self.args.eval_use_gather_object
        )
        # The weights do not change during an evaluation: each image is encoded once, in whatever batches
        # its questions come (they are spread over several when grouped by question). Not with sharded
        # parameters, which the image encoder cannot run outside the model's forward.
        if not (self.is_fsdp_enabled or is_deepspeed_zero3_enabled()):
            self._evaluation_cache = ImageEmbeddingCache(EVALUATION_CACHE_BYTES, evict=True)
        try:
            return super().evaluation_loop(*args, **kwargs)
        finally:
            self._evaluation_cache = None

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs,
    ) -> tuple[torch.Tensor | None, torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        # Which candidate list each row is ranked against (evaluation batches of a ranking run): not a model input.
        inputs = dict(inputs)
        answer_sets = inputs.pop(ANSWER_SET_COLUMN, None)
        if not self.args.predict_with_generate or prediction_loss_only:
            # The loss only: the forward's other outputs are image-encoder states, one per question, which the
            # Trainer would otherwise gather for every row of the set as "predictions".
            loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
            return loss, None, None

        inputs = self._prepare_inputs(inputs)
        if not gen_kwargs and hasattr(self, "_gen_kwargs"):
            gen_kwargs = self._gen_kwargs.copy()
        gen_kwargs = {k: v for k, v in gen_kwargs.items() if v is not None}
        unwrapped = self.accelerator.unwrap_model(self.model)
        fsdp2 = isinstance(unwrapped, FSDPModule)
        # Sharded parameters must be gathered on every rank for every decoding step. (transformers'
        # is_fsdp_managed_module only knows the FSDP2 models that transformers itself shards, not accelerate's.)
        gen_kwargs.setdefault(
            "synced_gpus", is_deepspeed_zero3_enabled() or is_fsdp_managed_module(self.model) or fsdp2
        )

        answer = functools.partial(generate_answers, unwrapped)
        if not self.family.is_blip:
            # The answer budget of evaluation (generation_max_length) as new tokens: a decoder-only model's
            # max_length would count the prompt too.
            gen_kwargs["max_new_tokens"] = gen_kwargs.pop("max_length", None) or self.args.generation_max_length
            answer = functools.partial(generate_prompt_answers, unwrapped, self.prompt_layout)
        summon = contextlib.nullcontext()
        if isinstance(self.model, FullyShardedDataParallel):
            summon = FullyShardedDataParallel.summon_full_params(self.model)
        elif fsdp2:
            # generate_answers calls the vision model, text encoder and decoder directly, outside the root
            # forward that gathers the root's own parameters (embeddings, norms, heads): run it as a root
            # forward. The layers wrapped on their own gather theirs in their hooks.
            if not hasattr(unwrapped, "vqa_generate_answers"):
                unwrapped.vqa_generate_answers = types.MethodType(generate_answers, unwrapped)
                register_fsdp_forward_method(unwrapped, "vqa_generate_answers")
            answer = unwrapped.vqa_generate_answers
        # Under the training's mixed precision, like the loss (and like image-encoder outputs kept by the cache).
        scores = None
        with summon, self.accelerator.autocast():
            if self.ranking_plan is not None:
                generated, scores = self.rank_or_generate(unwrapped, inputs, answer_sets, gen_kwargs)
            elif not self.family.is_blip:
                generated = answer(**inputs, **gen_kwargs)
            else:
                generated = answer(
                    pixel_values=inputs.get("pixel_values"),
                    image_embeds=inputs.get("image_embeds"),
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs.get("attention_mask"),
                    image_index=inputs.get("image_index"),
                    **gen_kwargs,
                )

        loss = None
        labels = inputs.get("labels")
        if labels is not None:
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = model(**inputs).loss.detach().mean()
        return loss, generated if scores is None else (generated, scores), labels

    def rank_or_generate(
        self, model: torch.nn.Module, inputs: dict[str, Any], answer_sets: torch.Tensor | None, gen_kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank the rows that have a candidate list, generate the others: ``(ids, scores)``, one row per question.

        Ranked rows get the chosen candidate's ids (as `generate` would return it) and their candidate scores;
        generated rows their generated ids and NaN scores. The image encoder runs once for both.
        """
        plan = self.ranking_plan
        count, device = inputs["input_ids"].shape[0], inputs["input_ids"].device
        sets = [-1] * count if answer_sets is None else answer_sets.tolist()
        step = answer_rows(model, self.prompt_layout, inputs, [i for i, s in enumerate(sets) if s >= 0], gen_kwargs)
        ranked, generated = step.ranked_rows, step.generated
        pad_token_id = self.family.pad_token_id(model)
        generated_index = torch.tensor(step.generated_rows, dtype=torch.long, device=device)
        scores = torch.full((count, plan.width), float("nan"))
        chosen: list[list[int]] = []
        if ranked:
            chosen, ranked_scores = plan.rank(step.prefix, [sets[i] for i in ranked])
            scores[ranked] = ranked_scores
        width = max([len(ids) for ids in chosen] + ([generated.shape[1]] if generated is not None else [1]))
        ids = torch.full((count, width), pad_token_id, dtype=torch.long, device=device)
        if generated is not None:
            ids[generated_index, : generated.shape[1]] = generated
        for row, row_ids in zip(ranked, chosen, strict=True):
            ids[row, : len(row_ids)] = torch.tensor(row_ids, device=device)
        return ids, scores.to(device)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self.is_fsdp_enabled else None
        checkpoint = _internal_call and output_dir is not None  # _save_checkpoint; push_to_hub passes no folder
        if plugin is None or checkpoint or "FULL_STATE_DICT" in str(plugin.state_dict_type):
            super().save_model(output_dir, _internal_call)
        else:
            # Checkpoints stay sharded (pytorch_model_fsdp_0/, what a restart resumes from), but under
            # SHARDED_STATE_DICT the Trainer would save no model at all here. The model a run hands over (and
            # pushes) is a full model.safetensors that from_pretrained loads: gathered from every process (each one
            # calls save_model), written by the main one.
            sharded = plugin.state_dict_type
            plugin.state_dict_type = StateDictType.FULL_STATE_DICT
            try:
                super().save_model(output_dir, _internal_call)
            finally:
                plugin.state_dict_type = sharded
        # The folder the run hands over holds one layout (files a checkpoint push copied up may be the other's).
        target = output_dir or self.args.output_dir
        if (
            not checkpoint
            and self.args.should_save
            and os.path.abspath(target) == os.path.abspath(self.args.output_dir)
        ):
            adapter = isinstance(self.model, PeftModel)
            remove_other_layout(target, adapter=adapter)
            if adapter:  # peft saves neither: the model's config and its answer length and beams
                self.model.config.save_pretrained(target)
                self.model.generation_config.save_pretrained(target)
        # The candidate lists go with every saved model and checkpoint, so that any of them can rank answers.
        if self.answer_candidates is not None and self.args.should_save:
            self.answer_candidates.save(output_dir or self.args.output_dir)

    def hand_over_merged(self) -> None:
        """LoRA (``--merge_lora``): fold the adapters into the model, on every process, right after training.

        From here on evaluation, prediction, `save_model` and `push_to_hub` use the merged model, so the metrics,
        ``predictions.jsonl`` and the saved folder all describe the model the run hands over (a plain transformers
        model), and the push uploads it instead of the emptied adapter wrapper. Not under FSDP or DeepSpeed, whose
        engine keeps the wrapped model: there run_vqa.py merges on the main process at the end (and refuses
        ``--push_to_hub``).
        """
        if not isinstance(self.model, PeftModel):
            raise TypeError(f"hand_over_merged needs a LoRA model (a PeftModel), not {type(self.model).__name__}.")
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError("hand_over_merged does not run under FSDP or DeepSpeed: merge at the end of the run.")
        self.model = merge_lora(self.model)
        self.model_wrapped = self.model

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Upload the model the run hands over, and only it, in one commit.

        Upstream's push uploads the output folder as it stands and deletes nothing in the repository. After a LoRA
        run that left the repository serving the base model: the checkpoint pushes (``--hub_strategy``) put an
        ``adapter_config.json`` at its top, which the final push of the merged model kept, so that
        ``from_pretrained("owner/repo")`` loaded the base model the adapter names. Here the folder's model is saved
        (merged model, full model or, with ``--merge_lora false``, the adapter), files of the other layout are
        removed from the folder and from the repository, and the ``adapter/`` copy and checkpoints stay local.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        model_name = kwargs.pop("model_name", None)
        if model_name is None and self.args.should_save:
            model_name = (self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))).split("/")[
                -1
            ]
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        adapter = isinstance(self.model, PeftModel)
        removed = remove_other_layout(self.args.output_dir, adapter)
        if removed:
            logger.info("Not part of the %s handed over, removed: %s", "adapter" if adapter else "model", removed)
        self.create_model_card(model_name=model_name, **kwargs)
        self._finish_current_push()  # a checkpoint push still uploading would land after this one
        return hf_api().upload_folder(
            repo_id=self.hub_model_id,
            folder_path=self.args.output_dir,
            commit_message=commit_message,
            token=token,
            run_as_future=not blocking,
            ignore_patterns=["_*", "checkpoint-*", f"{ADAPTER_FOLDER}/*"],
            delete_patterns=other_layout_files(adapter),
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def create_model_card(self, model_name: str | None = None, **kwargs: Any) -> None:
        if not self.is_world_process_zero():
            return
        info = {**self.card_info, **{k: v for k, v in kwargs.items() if v is not None}}
        if isinstance(self.model, PeftModel):  # the folder holds the adapter: the card says how to load it
            info.setdefault("adapter_base", self.model.peft_config[self.model.active_adapter].base_model_name_or_path)
        text = render_model_card(
            model_name=model_name or os.path.basename(os.path.abspath(self.args.output_dir)),
            output_dir=self.args.output_dir,
            log_history=self.state.log_history,
            training_args=self.args,
            repo_id=getattr(self, "hub_model_id", None),
            **info,
        )
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)
