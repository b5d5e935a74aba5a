"""Command-line arguments of the recipe (what model to start from, what data to train on) and their parsing.

The third group is transformers' `Seq2SeqTrainingArguments` with VQA defaults. `parse_args` turns the
dataclasses into `--flags` with `HfArgumentParser` and reads a `.yaml`/`.json` first argument as a config
file, which later flags override.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import yaml
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from .answering.candidates import ANSWER_MODES, DEFAULT_MAX_CANDIDATES
from .metrics.screening import parse_operating_points
from .models.blip2 import DEFAULT_PROMPT_TEMPLATE
from .models.ranking import DEFAULT_TOP_K

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Salesforce/blip-vqa-base"


@dataclass
class ModelArguments:
    """Which BLIP to fine-tune (or which config to train from scratch) and how."""

    model_name_or_path: str | None = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Pretrained BLIP VQA checkpoint (hub id or local folder). Set to an empty string "
            "together "
            "with --config_name to train from scratch."
        },
    )
    config_name: str | None = field(
        default=None,
        metadata={
            "help": "BlipConfig (hub id or folder). Without --model_name_or_path the model is initialised "
            "randomly from this config, as in transformers' run_clm.py."
        },
    )
    processor_name: str | None = field(
        default=None,
        metadata={"help": "Processor (tokenizer + image processor) if not the same as the model or config."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where to store models and processors downloaded from the hub."}
    )
    revision: str = field(default="main", metadata={"help": "Model revision: branch, tag or commit id."})
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token for private models (default: the one stored by `hf auth login`)."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom code from the hub. Off by default: BLIP needs none."},
    )
    freeze_vision_encoder: bool = field(
        default=False, metadata={"help": "Do not update the ViT image encoder (saves memory and time)."}
    )
    freeze_text_encoder: bool = field(
        default=False, metadata={"help": "Do not update the question encoder (BERT with cross-attention)."}
    )
    cache_image_embeddings: bool = field(
        default=False,
        metadata={
            "help": "With --freeze_vision_encoder: encode each image once per run and keep its image-encoder "
            "output in CPU memory for later epochs and evaluations (see retina_vqa.training.embedding_cache)."
        },
    )
    image_embedding_cache_gb: float = field(
        default=8.0,
        metadata={
            "help": "Most CPU memory the kept image-encoder outputs may take (blip-vqa-base at 384 px: ~1.8 MB "
            "per image in fp32). Images beyond it are encoded every time."
        },
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "BLIP-2 / InstructBLIP built from --config_name: take the image encoder (architecture and "
            "weights) from this checkpoint (a BLIP VQA or BLIP-2 folder or hub id), as BLIP-2 starts from a "
            "pretrained image encoder; add --freeze_vision_encoder to keep it frozen, as BLIP-2 does. Its image "
            "processor must normalise as the processor of this run does."
        },
    )
    freeze_language_model: bool = field(
        default=False,
        metadata={"help": "BLIP-2 / InstructBLIP: do not update the language model (OPT, Flan-T5, ...)."},
    )
    freeze_qformer: bool = field(
        default=False,
        metadata={"help": "BLIP-2 / InstructBLIP: do not update the Q-Former and its query tokens."},
    )
    lora_r: int = field(
        default=0,
        metadata={
            "help": "LoRA rank (0: off, train the weights themselves). With it only the adapters train; defaults "
            "per family in retina_vqa.models.lora.DEFAULT_TARGETS (BLIP: the image encoder's qkv and the text "
            "query/value; BLIP-2/InstructBLIP: the Q-Former's query/value and the language model's q/v)."
        },
    )
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA scaling numerator (the update is alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Modules to adapt instead of the family's default: a regular expression over full module names, "
            "a comma-separated list of name suffixes, or 'all-linear'. The vocabulary head is never adapted."
        },
    )
    merge_lora: bool = field(
        default=True,
        metadata={
            "help": "At the end of training, fold the adapters into the weights and save a plain transformers "
            "model in --output_dir (the adapter alone goes to --output_dir/adapter)."
        },
    )
    label_smoothing: float | None = field(
        default=None,
        metadata={
            "help": "Label smoothing of BLIP's answer-decoder loss; default 0.1, as BLIP was pre-trained and "
            "fine-tuned (transformers defaults to 0.0). BLIP VQA only."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Train and answer at this square image size. For a pretrained checkpoint whose size "
            "differs, the position embeddings are interpolated (interpolate_pos_encoding)."
        },
    )

    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "Attention kernels: 'sdpa' (torch's fused scaled_dot_product_attention for the image encoder "
            "and the question/answer transformers; same results as eager up to rounding, faster and lighter) or "
            "'eager' (transformers' BLIP attention, which also returns attention probabilities).",
            "choices": ["sdpa", "eager"],
        },
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path == "":
            self.model_name_or_path = None
        if self.model_name_or_path is None and self.config_name is None:
            raise ValueError(
                "Nothing to build a model from: pass --model_name_or_path (e.g. Salesforce/blip-vqa-base) or "
                "--config_name (e.g. configs/blip-tiny) to train from scratch."
            )
        if self.model_name_or_path is not None and self.config_name is not None:
            raise ValueError(
                "--model_name_or_path and --config_name both given: use --model_name_or_path to fine-tune a "
                "checkpoint, or --config_name with --model_name_or_path '' to train from scratch."
            )
        if self.lora_r and self.model_name_or_path is None:
            raise ValueError(
                "--lora_r trains adapters on a pretrained model, but --config_name builds one from scratch (random "
                "frozen weights, which a resume could not rebuild): pass --model_name_or_path, or drop --lora_r."
            )
        if self.vision_model_name_or_path == "":
            self.vision_model_name_or_path = None
        if self.vision_model_name_or_path is not None and self.config_name is None:
            raise ValueError(
                "--vision_model_name_or_path builds a new model around a pretrained image encoder, so it needs "
                "--config_name (and --model_name_or_path ''); a checkpoint given with --model_name_or_path already "
                "has its own image encoder."
            )
        if self.lora_target_modules is not None and "," in self.lora_target_modules:
            self.lora_target_modules = [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]
        if self.cache_image_embeddings and not self.freeze_vision_encoder:
            raise ValueError(
                "--cache_image_embeddings keeps the image encoder's outputs, which is only right while the "
                "encoder does not change: add --freeze_vision_encoder, or drop --cache_image_embeddings."
            )
        if self.image_embedding_cache_gb <= 0:
            raise ValueError(f"--image_embedding_cache_gb must be positive, got {self.image_embedding_cache_gb}.")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"--image_size must be at least 16 pixels, got {self.image_size}.")


@dataclass
class DataTrainingArguments:
    """Where the question-answer data comes from and how it is prepared."""

    dataset_dir: str | None = field(
        default=None,
        metadata={
            "help": "A DatasetDict saved with save_to_disk (folders train/, validation/, test/) such as "
            "RetinaVQA (one row per question, each with its image) or the output of `python -m retina_vqa.synthetic` "
            "and `python -m retina_vqa.build_dataset` (one row per image, its questions as lists: disk ~ images x "
            "image size, not x questions; EyePACS at 1024 px ~14 GB). Both are read as one row per question; a "
            "dataset validated before with the same settings is not validated again."
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the hub."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The hub dataset's config."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "Training data: an imagefolder folder (with metadata.jsonl) or a JSON lines file."},
    )
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data, like --train_file."})
    test_file: str | None = field(default=None, metadata={"help": "Prediction data, like --train_file."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    validation_split: str = field(default="validation", metadata={"help": "Split used for evaluation."})
    test_split: str = field(default="test", metadata={"help": "Split used for prediction."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    question_column: str = field(default="question", metadata={"help": "Column holding the questions."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the reference answers."})
    question_type_column: str = field(
        default="question_type",
        metadata={"help": "Optional column with a question type; metrics are broken down by it when present."},
    )
    patient_column: str = field(
        default="patient_id",
        metadata={
            "help": "Optional column naming each row's patient (python -m retina_vqa.build_dataset writes it where "
            "patients are known): the test split's referable / any-DR sensitivity and specificity are then also "
            "reported per patient, worse eye (predict_diagnosis_patient_* keys)."
        },
    )
    answer_type_column: str = field(
        default="answer_type",
        metadata={"help": "Optional column with 'closed' / 'open' answer types, used by the metrics."},
    )
    max_question_length: int = field(
        default=32, metadata={"help": "Questions are truncated to this many tokens (with [CLS] and [SEP])."}
    )
    max_answer_length: int = field(
        default=48,
        metadata={
            "help": "Answers are truncated to this many tokens (with [DEC] and [SEP]); also the default "
            "generation length."
        },
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={
            "help": "BLIP-2 / InstructBLIP: the text around each question, with {question} (default: the BLIP-2 "
            "paper's VQA prompt). BLIP VQA reads the question alone."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many evaluation rows."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only this many prediction rows."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for the tokenisation map."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Redo the cached tokenisation."})
    skip_invalid_examples: bool = field(
        default=False,
        metadata={
            "help": "Drop rows that fail validation (empty text, unreadable images, ...) instead of stopping; "
            "the counts per reason go to all_results.json."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={
            "help": "Pad question and answer lengths of a batch up to a multiple of this (default: 8 on GPU, where "
            "tensor cores want it; none on CPU)."
        },
    )
    plot: bool = field(
        default=True,
        metadata={"help": "Write curves.png, confusion.png and samples.png into --output_dir at the end of a run."},
    )
    max_image_side: int | None = field(
        default=2048,
        metadata={
            "help": "Very large photographs are downsized on load so their longer side is at most this "
            "(before the processor resizes them); bounds memory per batch."
        },
    )
    augment: bool = field(
        default=False,
        metadata={
            "help": "Augment the training batches' images (never evaluation or prediction), each distinct image "
            "once per "
            "batch so all its questions see the same pixels: random brightness, contrast, saturation and per-"
            "channel colour gains, an illumination fall-off or gradient, a field of 85-150%% of the area (zoomed "
            "in or out) around the centre, a rotation of up to 10 degrees (black fill) and a horizontal flip of "
            "images none of whose rows in the batch asks the laterality question (rows without "
            "--question_type_column never flip). Seeded by --seed, the process and the DataLoader worker "
            "(retina_vqa.data.augment). For models that must work on other cameras (bench/cross_camera.py "
            "measures it)."
        },
    )
    augment_flip_probability: float = field(
        default=0.5,
        metadata={
            "help": "With --augment: the chance that an image no laterality question is asked of in the batch is "
            "mirrored (0: every eye keeps its side as photographed; bench/README.md 'Demo accuracy levers' measures "
            "both)."
        },
    )
    decoded_image_cache_gb: float = field(
        default=2.0,
        metadata={
            "help": "Decoded images kept in memory so each is decoded once, not in every batch and epoch it is in "
            "(the same pixels; retina_vqa.data.image_cache): at most this many GB of pixels per DataLoader "
            "(training, evaluation) of each training process, split among its workers (each keeps its own part). "
            "Past it, images are decoded as needed. 0: no cache."
        },
    )

    def __post_init__(self) -> None:
        if not self.decoded_image_cache_gb >= 0:
            raise ValueError(
                f"--decoded_image_cache_gb must be >= 0 (0: decode every image every time), got "
                f"{self.decoded_image_cache_gb}."
            )
        sources = [
            name
            for name, value in (
                ("--dataset_dir", self.dataset_dir),
                ("--dataset_name", self.dataset_name),
                (
                    "--train_file/--validation_file/--test_file",
                    self.train_file or self.validation_file or self.test_file,
                ),
            )
            if value
        ]
        if not sources:
            raise ValueError(
                "No data given: pass --dataset_dir (a save_to_disk folder), --dataset_name (hub) or "
                "--train_file/--validation_file/--test_file. Make synthetic data with "
                "`python -m retina_vqa.synthetic --output_dir data/retinavqa-synthetic`."
            )
        if len(sources) > 1:
            raise ValueError(f"Give one data source, got {' and '.join(sources)}.")
        if "{question}" not in self.prompt_template:
            raise ValueError(f"--prompt_template {self.prompt_template!r} must contain {{question}}.")
        for name in ("max_question_length", "max_answer_length"):
            if getattr(self, name) < 3:
                raise ValueError(f"--{name} must be at least 3 tokens (start, one word, end).")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be a positive number of rows, got {value}.")


MAX_AUTO_WORKERS = 8
# Measured on the demo (bench/README.md, "Image grouping and accuracy"): see the field's help.
MAX_QUESTIONS_PER_IMAGE = 2


def auto_num_workers(use_cpu: bool = False) -> int:
    """DataLoader workers for ``--dataloader_num_workers -1``: the CPU cores of this process's share, less one
    for the training loop itself, at most `MAX_AUTO_WORKERS`, where a GPU trains; 0 on CPU-only machines."""
    if use_cpu or not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_AUTO_WORKERS, cores // processes - 1))


@dataclass
class VqaTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with the defaults a VQA recipe needs.

    Only defaults change: answers are generated for evaluation, and the image column survives until the
    collator. `overwrite_output_dir` returns the guard of the transformers examples.
    """

    predict_with_generate: bool = field(
        default=True,
        metadata={"help": "Generate answers for evaluation and prediction (needed for metrics)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Must stay False: the collator reads the image column, which the model does not take."},
    )
    group_by_image: bool = field(
        default=True,
        metadata={
            "help": "Train with questions of one image next to each other (at most --max_questions_per_image), so a "
            "batch encodes the image once for them: several times less image-encoder work. The epoch covers the "
            "same questions as random order, but a step covers fewer images. Applies to the default random "
            "sampling."
        },
    )
    max_questions_per_image: int = field(
        default=MAX_QUESTIONS_PER_IMAGE,
        metadata={
            "help": "With --group_by_image: at most this many questions of one image in a run; the runs are "
            "shuffled, so a batch of B questions covers about B / this images. 0: all questions of an image "
            "together (fastest, but on the demo laterality fell from 0.92 to 0.52). Default 2: the most accurate "
            "setting measured, 1.26x faster than random order (bench/README.md, 'Image grouping and accuracy')."
        },
    )
    image_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Add an image-level objective to training (BLIP, BLIP-2, InstructBLIP; not with --lora_r): a "
            "linear classifier on the image encoder's [CLS] state predicts each closed question's answer (yes/no, "
            "the grade, the eye: the ranked candidate lists) among its type's answers; its loss, times this weight, "
            "is added to the answer loss. A short path from the answers to the image encoder, for models trained "
            "from scratch or far from their pre-training. The classifier is dropped from the saved model. 0 "
            "(default): off (bench/README.md, 'Demo accuracy levers', measures it)."
        },
    )
    patch_dropout: float = field(
        default=0.0,
        metadata={
            "help": "Train the image encoder on a random part of each image's patches: this fraction of the patch "
            "tokens of every image is dropped in each training step ([CLS] and position embeddings kept; PatchDropout, "
            "Liu et al. 2023). The image encoder's cost falls about in proportion. Evaluation, prediction and the "
            "saved model see every patch. BLIP, BLIP-2, InstructBLIP; not with --cache_image_embeddings. 0 "
            "(default): off (docs/accuracy.md measures it)."
        },
    )
    group_eval_by_question: bool = field(
        default=True,
        metadata={
            "help": "Evaluate and predict with the questions sorted by text within chunks of 256 images, so a batch "
            "decodes answers of similar length (a yes/no batch stops after a few tokens), while each image is "
            "encoded once per evaluation (kept image-encoder outputs). Metrics and predictions.jsonl do not "
            "change (rows are put back in order); eval_loss is averaged over different batches."
        },
    )
    answer_mode: str = field(
        default="generate",
        metadata={
            "help": "How evaluation and prediction answer: 'generate' (default: free generation, the numbers of "
            "earlier versions stay comparable), 'rank' (every question whose type has a candidate list gets the most "
            "likely of its candidates, with a probability for each; predictions.jsonl gains answer_scores), or 'auto' "
            "(rank the closed question types whose training answers form a small set, generate the open ones). The "
            "lists come from the training split (or --answer_list) and are saved with the model as "
            "answer_candidates.json either way, so `python -m retina_vqa.predict --answer_mode auto` can rank later.",
            "choices": list(ANSWER_MODES),
        },
    )
    answer_list: str | None = field(
        default=None,
        metadata={
            "help": "A JSON file of candidate answers instead of those of the training split: a list of answers for "
            'every question (["yes", "no", ...]) or {"question_type": ["answer", ...], ...} (questions map to a '
            "type by the dataset's question_type column or their training wording), or a saved "
            "answer_candidates.json."
        },
    )
    max_candidate_answers: int = field(
        default=DEFAULT_MAX_CANDIDATES,
        metadata={
            "help": "A question type gets a candidate list when its training answers form a set at most this large "
            "(answers compared after VQA normalisation)."
        },
    )
    rank_top_k: int = field(
        default=DEFAULT_TOP_K,
        metadata={
            "help": "Candidate lists longer than this are pre-selected by the probability of their first token: only "
            "the top k are scored in full, as BLIP's VQA evaluation does (k = 128)."
        },
    )
    calibrate: bool = field(
        default=False,
        metadata={
            "help": "With --answer_mode rank/auto, --do_eval and --predict_with_generate (the default): fit a "
            "temperature per ranked question type on the validation split (minimum negative log-likelihood), save it "
            "in answer_candidates.json (predict and the Python API apply it), and report ECE and the referable-DR AUC "
            "before and after."
        },
    )
    fit_ood_guard: bool = field(
        default=False,
        metadata={
            "help": "After training, fit the out-of-distribution guard (retina_vqa.ood: Mahalanobis distance of pooled "
            "image-encoder features, threshold at the validation split's 99th percentile) on the training and "
            "validation images of --dataset_dir and save it with the model: predict, the Python API and the app then "
            "warn before answering an image unlike the training photographs."
        },
    )
    ood_guard_max_images: int = field(
        default=2000, metadata={"help": "With --fit_ood_guard: at most this many distinct images per split."}
    )
    operating_points: str | None = field(
        default=None,
        metadata={
            "help": "Referral thresholds on P(referable DR) (the summed probability of moderate, severe and "
            "proliferative DR), e.g. 'sensitivity=0.975,specificity=0.98': chosen on the validation split's ranked "
            "diagnosis answers (needs --do_eval and --answer_mode rank/auto), saved as operating_points.json and "
            "applied to the test split (predict_operating_point_* keys, with 95%% Wilson intervals)."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "BLIP VQA uses every parameter in each step; searching for unused ones costs time."},
    )
    auto_bf16: bool = field(
        default=True,
        metadata={
            "help": "BLIP-2 / InstructBLIP on a GPU with bf16: train in bf16 unless --bf16 or --fp16 is given (fp16 "
            "is a known NaN trap for BLIP-2). false: the Trainer's default, fp32."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in a non-empty --output_dir instead of resuming from its last checkpoint. "
            "Files already there may be overwritten."
        },
    )
    dataloader_num_workers: int = field(
        default=-1,
        metadata={
            "help": "Processes that decode and resize images while the model trains. -1 (default): with CUDA, "
            f"the CPU cores per training process minus one, at most {MAX_AUTO_WORKERS}; without CUDA, 0 (on a CPU "
            "the workers compete with the model for the same cores). 0: in the training process."
        },
    )
    dataloader_persistent_workers: bool = field(
        default=True,
        metadata={
            "help": "Keep the DataLoader workers between epochs and evaluations instead of starting them anew "
            "(ignored with 0 workers)."
        },
    )

    def __post_init__(self) -> None:
        if self.dataloader_pin_memory and not _has_accelerator():
            # Pinned memory only speeds up copies to an accelerator; without one torch warns on every dataloader.
            self.dataloader_pin_memory = False
        if self.remove_unused_columns:
            raise ValueError(
                "--remove_unused_columns True would drop the image column before the collator sees it; "
                "leave it at False (the collator picks the model inputs itself)."
            )
        if not self.image_loss_weight >= 0.0:
            raise ValueError(f"--image_loss_weight must be 0 (off) or positive, got {self.image_loss_weight}.")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(
                f"--patch_dropout is the fraction of image patches dropped in training, in [0, 1); got "
                f"{self.patch_dropout}."
            )
        if self.max_questions_per_image < 0:
            raise ValueError(
                f"--max_questions_per_image must be 0 (no bound) or positive, got {self.max_questions_per_image}."
            )
        if self.operating_points:
            parse_operating_points(self.operating_points)  # the targets' syntax, before any data is read
            if self.answer_mode == "generate" or not self.do_eval:
                raise ValueError(
                    "--operating_points chooses thresholds on the validation split's ranked diagnosis probabilities: "
                    "add --do_eval and --answer_mode auto (or rank)."
                )
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"--answer_mode must be one of {', '.join(ANSWER_MODES)}, got {self.answer_mode!r}.")
        if self.calibrate and self.answer_mode == "generate":
            raise ValueError(
                "--calibrate fits temperatures to the probabilities of ranked answers: add --answer_mode auto "
                "(or rank)."
            )
        if self.calibrate and not self.predict_with_generate:
            # Without it the evaluation computes no metrics, so no candidate scores reach the temperature fit.
            raise ValueError(
                "--calibrate fits temperatures to the candidate scores of the evaluation's answers, which "
                "--predict_with_generate false turns off: pass --predict_with_generate true (the default), or drop "
                "--calibrate."
            )
        if self.rank_top_k < 1 or self.max_candidate_answers < 1:
            raise ValueError(
                f"--rank_top_k and --max_candidate_answers must be at least 1, got {self.rank_top_k} and "
                f"{self.max_candidate_answers}."
            )
        if self.answer_list is not None and not os.path.isfile(self.answer_list):
            raise ValueError(f"--answer_list {self.answer_list}: no such file (a JSON list or object of answers).")
        if self.label_smoothing_factor:
            # The Trainer's own smoothing reads outputs.logits, which the shared-image forward does not return
            # (it keeps the decoder's loss, which smooths itself): it would crash at the first step.
            raise ValueError(
                f"--label_smoothing_factor {self.label_smoothing_factor} is the Trainer's label smoothing, which "
                "BLIP VQA does not use: pass --label_smoothing "
                f"{self.label_smoothing_factor} instead (the answer decoder's own smoothing; default 0.1)."
            )
        if self.dataloader_num_workers < -1:
            raise ValueError(
                f"--dataloader_num_workers must be -1 (automatic) or >= 0, got {self.dataloader_num_workers}."
            )
        if self.dataloader_num_workers == -1:
            self.dataloader_num_workers = auto_num_workers(use_cpu=self.use_cpu)
            if self.dataloader_num_workers == 0 and self.dataloader_prefetch_factor is not None:
                logger.warning(
                    "--dataloader_prefetch_factor %s ignored: no DataLoader workers on this machine by default "
                    "(set --dataloader_num_workers to use workers).",
                    self.dataloader_prefetch_factor,
                )
                self.dataloader_prefetch_factor = None
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False  # torch's DataLoader refuses it without workers
        if self.ddp_backend is None and deepspeed_on_cpus():
            # DeepSpeed runs on the CPU (its CPU accelerator, gloo), but accelerate finds no backend without
            # GPUs and then counts one process: DeepSpeed's batch-size check fails (4 != 4 * 1 * 2).
            self.ddp_backend = "gloo"
        super().__post_init__()


def choose_precision(training_args: VqaTrainingArguments, family: str) -> None:
    """BLIP-2 / InstructBLIP: bf16 by default on a GPU that has it, and a loud warning for fp16.

    fp16 fine-tuning of BLIP-2 is a known NaN trap (an fp16 ViT or Q-Former overflows: transformers keeps the
    Q-Former and query tokens in fp32 for that reason); bf16 has fp32's range. BLIP VQA keeps the Trainer's
    default (fp32 unless --bf16/--fp16).
    """
    if family == "blip":
        return
    if training_args.fp16:
        logger.warning(
            "--fp16 with a %s model: fp16 fine-tuning of BLIP-2 is known to produce NaN losses (an fp16 image "
            "encoder or Q-Former overflows). Use --bf16 (same memory, fp32's range) unless your GPU lacks it.",
            family,
        )
    elif training_args.auto_bf16 and not training_args.bf16 and not training_args.use_cpu and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            logger.warning(
                "Training the %s model in bf16 (BLIP-2's default on a GPU; --auto_bf16 false: fp32).", family
            )
            training_args.bf16, training_args.mixed_precision = True, "bf16"


def deepspeed_on_cpus() -> bool:
    """Several processes launched with a DeepSpeed accelerate config on a machine without GPUs."""
    return (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
        and not torch.cuda.is_available()
    )


def _has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) to copy batches to."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, VqaTrainingArguments]:
    argv = sys.argv[1:] if argv is None else argv
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not deepspeed_on_cpus():
        # Several processes started by accelerate/torchrun on a machine without GPUs: DDP over gloo on
        # the CPU. (accelerate's own MULTI_CPU mode needs mpirun; accelerate_configs/cpu_ddp.yaml uses
        # the torchrun launcher instead.) Must be set before the TrainingArguments pick a device.
        # Not for DeepSpeed: accelerate's CPU mode drops it and runs DDP.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    if not _has_accelerator():
        # DeepSpeed (which the Trainer imports when it is installed) would warn on every run that it found no GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, VqaTrainingArguments))
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        # A config file, optionally followed by flags that override it: run_vqa.py demo.yaml --num_train_epochs 1
        argv = config_file_args(argv[0]) + argv[1:]
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_hub_handover(model_args, training_args)
    check_augment(model_args, data_args)
    return model_args, data_args, training_args


def check_augment(model_args: ModelArguments, data_args: DataTrainingArguments) -> None:
    """Refuse ``--augment`` with ``--cache_image_embeddings``: the kept encoder output of an image would be that of
    its first augmented version, for every later epoch."""
    if not 0.0 <= data_args.augment_flip_probability <= 1.0:
        raise ValueError(
            f"--augment_flip_probability must be between 0 and 1, got {data_args.augment_flip_probability}"
        )
    if data_args.augment and model_args.cache_image_embeddings:
        raise ValueError(
            "--augment changes the training images every batch, but --cache_image_embeddings keeps each image's "
            "image-encoder output from its first batch: the later epochs would not see the augmentation. Drop one of "
            "them."
        )


def check_hub_handover(model_args: ModelArguments, training_args: VqaTrainingArguments) -> None:
    """Refuse a push whose repository could not load as the trained model (flags of two dataclasses)."""
    if not (training_args.push_to_hub and model_args.lora_r and not model_args.merge_lora):
        return
    if model_args.image_size is not None:
        raise ValueError(
            f"--push_to_hub with --lora_r and --merge_lora false pushes an adapter, which loads onto "
            f"{model_args.model_name_or_path} as published; --image_size {model_args.image_size} changes its image "
            "encoder (position embeddings), which the adapter does not carry. Push the merged model (drop "
            "--merge_lora false) or drop --image_size."
        )


def config_file_args(path: str) -> list[str]:
    """A YAML/JSON config as the equivalent command-line flags (so later flags override it)."""
    with open(path, encoding="utf-8") as f:
        config = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(config).__name__}.")
    args = []
    for key, value in config.items():
        if value is None:  # the field's default
            continue
        values = value if isinstance(value, list) else [value]
        args += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)]
    return args
