"""Fine-tuning modes: trainable parameters, training memory and samples/s of full fine-tuning, LoRA and frozen parts.

Variants (the recipe's own switches; LoRA through ``models.lora.apply_lora`` with its default targets, r 16 and
run_vqa.py's default alpha and dropout):

* ``full``: every parameter trains;
* ``lora``: LoRA adapters only (BLIP: the image encoder's ``qkv`` and ``query``/``value`` of the question encoder
  and answer decoder; BLIP-2: the Q-Former's ``query``/``value`` and the language model's ``q_proj``/``v_proj``
  (OPT) or ``q``/``v`` (T5));
* ``frozen_vision`` (BLIP): ``--freeze_vision_encoder``, the question encoder and answer decoder train;
* ``qformer_only`` (BLIP-2): ``--freeze_vision_encoder --freeze_language_model``, BLIP-2's own recipe: the
  Q-Former, its query tokens and the projection into the language model train.

Part ``blip``: BLIP VQA, the ``BlipConfig()`` architecture (blip-vqa-base size, random init, as common.py builds
it) at 128 px, a few steps of the recipe's ``VqaTrainer`` on cached synthetic data (train_throughput.py's
``run_recipe``). Every run is a fresh child process started by an otherwise idle wrapper process that reads
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (as memory_disk.py): the peak RSS is that variant's alone. The parent
alternates the variants (A B C, C B A, ...) and reports the median samples/s (steps after ``--warmup_steps``),
the median peak RSS and both ratios to ``full``, next to the training state the formula below predicts.

Part ``blip2_meta``: BLIP-2 at its published sizes (ViT-g + Q-Former + OPT-2.7B, as Salesforce/blip2-opt-2.7b; and
with Flan-T5-XL, as Salesforce/blip2-flan-t5-xl), configurations written here, nothing downloaded, built on the
meta device (no memory, no weights), to count trainable and total parameters per variant and estimate the memory
of the training state, activations NOT included:

* bf16 mixed precision (bf16 weights, fp32 optimizer): ``2 B x total + 14 B x trainable`` (every weight in bf16;
  per trainable parameter a bf16 gradient 2 B, an fp32 master copy 4 B, AdamW's two fp32 moments 8 B). peft keeps
  the adapters in fp32 (weight 4 + gradient 4 + moments 8): also 16 B per trainable parameter in all;
* the Trainer's ``--bf16`` (autocast over fp32 weights, what run_vqa.py does): ``4 B x total + 12 B x trainable``
  (fp32 weights; fp32 gradient 4 B and moments 8 B per trainable parameter).

Part ``blip2_medium``: a BLIP-2-OPT whose widths and depths are those of the 2.7B model divided by
``--medium_scale`` (head sizes, 224 px / patch 14, 32 query tokens and the prompts unchanged; vocabulary divided
by the scale squared so the embeddings keep their share of the language model), trained for a few real steps on
the CPU like part ``blip``: samples/s and peak RSS per variant.

    python bench/fine_tuning_modes.py            # all parts, ~10-15 min on 2 cores
    python bench/fine_tuning_modes.py --parts blip2_meta   # the counts and estimates only, seconds
    python bench/fine_tuning_modes.py --quick    # smoke test: tiny configs, 1 repeat (meta counts at real size)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import common

VARIANTS = {"blip": ("full", "lora", "frozen_vision"), "blip-2": ("full", "lora", "qformer_only")}
LORA_R = 16
GIB = 2**30

# Published sizes (hub config.json of Salesforce/blip2-opt-2.7b, facebook/opt-2.7b, google/flan-t5-xl; transformers'
# Blip2VisionConfig / Blip2QFormerConfig defaults are the ViT-g and Q-Former of both). Written out, not downloaded.
VIT_G = {
    "hidden_size": 1408,
    "intermediate_size": 6144,
    "num_hidden_layers": 39,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}
QFORMER = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "cross_attention_frequency": 2,
}
OPT_2_7B = {
    "model_type": "opt",
    "hidden_size": 2560,
    "ffn_dim": 10240,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "vocab_size": 50272,
    "max_position_embeddings": 2048,
    "word_embed_proj_dim": 2560,
}
FLAN_T5_XL = {
    "model_type": "t5",
    "d_model": 2048,
    "d_ff": 5120,
    "d_kv": 64,
    "num_heads": 32,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    # As the hub config says; transformers 5.24's T5Config still ties lm_head to the embeddings (it reads False only
    # to skip the output scaling), so the built model has one vocabulary x d_model matrix less than the checkpoint.
    "tie_word_embeddings": False,
}
REAL_BLIP2 = {"blip2-opt-2.7b": OPT_2_7B, "blip2-flan-t5-xl": FLAN_T5_XL}
BLIP2_OPT_TINY = common.ROOT / "configs" / "blip2-opt-tiny"


# -------------------------------------------------------------------------------------------------- variants


def lora_settings() -> tuple[float, float]:
    """run_vqa.py's default LoRA alpha and dropout (the rank is this benchmark's, ``LORA_R``)."""
    from retina_vqa.arguments import ModelArguments

    fields = ModelArguments.__dataclass_fields__
    return fields["lora_alpha"].default, fields["lora_dropout"].default


def freeze_flags(variant: str) -> dict[str, bool]:
    """The ModelArguments flags of a variant (LoRA freezes through peft instead)."""
    return {
        "full": {},
        "lora": {},
        "frozen_vision": {"freeze_vision_encoder": True},
        "qformer_only": {"freeze_vision_encoder": True, "freeze_language_model": True},
    }[variant]


def trainable_by_part(model) -> dict[str, int]:
    """Trainable parameters per top-level part (``lora`` for the adapters, wherever they sit)."""
    parts: dict[str, int] = defaultdict(int)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            name = name.removeprefix("base_model.model.")  # inside a PeftModel
            parts["lora" if ".lora_" in name else name.split(".")[0]] += parameter.numel()
    return dict(parts)


def state_estimates(trainable: int, total: int) -> dict[str, float]:
    """Training-state memory (GiB) without activations: see the module docstring for the formulas."""
    return {
        "bf16_mixed_gib": (2 * total + 14 * trainable) / GIB,
        # fp32 weights: the Trainer's --bf16 (autocast) and plain fp32 training (the CPU runs here) alike.
        "fp32_weights_gib": (4 * total + 12 * trainable) / GIB,
    }


# ------------------------------------------------------------------------------------------- BLIP-2 on meta


def real_blip2_config(name: str):
    """A Blip2Config of the published sizes (random-init semantics; only the shapes matter here)."""
    from transformers import CONFIG_MAPPING, Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

    text = dict(REAL_BLIP2[name])
    text_config = CONFIG_MAPPING[text.pop("model_type")](**text)
    return Blip2Config(
        vision_config=Blip2VisionConfig(**VIT_G).to_dict(),
        qformer_config=Blip2QFormerConfig(**QFORMER).to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=32,
        image_token_index=text_config.vocab_size - 1,  # any id: the placeholders change no parameter
    )


def count_on_meta(name: str, variant: str) -> dict[str, Any]:
    """Build ``name`` on the meta device (shapes only), apply ``variant`` and count."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    from retina_vqa.models.blip import freeze
    from retina_vqa.models.lora import apply_lora, parameter_counts

    with torch.device("meta"), warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated is_gradient_checkpointing: a FutureWarning per model.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = Blip2ForConditionalGeneration(real_blip2_config(name))
        if variant == "lora":
            model = apply_lora(model, LORA_R, *lora_settings())  # adapters on meta too
    # The same call load_model makes for --freeze_vision_encoder / --freeze_language_model.
    flags = freeze_flags(variant)
    freeze(model, vision_model="freeze_vision_encoder" in flags, language_model="freeze_language_model" in flags)
    counts = parameter_counts(model)
    return {
        "model": name,
        "variant": variant,
        **counts,
        "trainable_by_part": trainable_by_part(model),
        **state_estimates(counts["trainable_parameters"], counts["total_parameters"]),
    }


def part_blip2_meta(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in REAL_BLIP2:
        for variant in VARIANTS["blip-2"]:
            row = count_on_meta(name, variant)
            print(
                f"  {name} {variant}: {row['trainable_parameters'] / 1e6:,.1f}M trainable of "
                f"{row['total_parameters'] / 1e6:,.1f}M",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    for row in rows:
        full = next(r for r in rows if r["model"] == row["model"] and r["variant"] == "full")
        row["trainable_fraction"] = row["trainable_parameters"] / row["total_parameters"]
        row["bf16_mixed_vs_full"] = row["bf16_mixed_gib"] / full["bf16_mixed_gib"]
    return rows


# ------------------------------------------------------------------------------------- medium BLIP-2 config


def _scale(part, heads: int, width: int, ffn: int, layers: int, scale: int, names: tuple[str, ...]) -> None:
    """Set heads, width, feed-forward width and layers of a sub-config (``names``: its keys for them) to the
    published ones divided by ``scale``, the head size kept."""
    head_size = width // heads
    new_heads = max(1, round(heads / scale))
    values = (new_heads, new_heads * head_size, new_heads * head_size * ffn // width, max(1, round(layers / scale)))
    for name, value in zip(names, values, strict=True):
        setattr(part, name, value)


def medium_config_dir(scale: int, image_size: int) -> Path:
    """configs/blip2-opt-tiny (its tokenizer, special ids, init ranges) with the 2.7B sizes divided by ``scale``.

    Written with its processor (32 image placeholders) to the bench cache (`common.save_config_dir`).
    """
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(BLIP2_OPT_TINY)
    vision, qformer, text = config.vision_config, config.qformer_config, config.text_config
    bert_names = ("num_attention_heads", "hidden_size", "intermediate_size", "num_hidden_layers")
    _scale(vision, 16, VIT_G["hidden_size"], VIT_G["intermediate_size"], 39, scale, bert_names)
    vision.image_size, vision.patch_size = image_size, VIT_G["patch_size"]
    _scale(qformer, 12, QFORMER["hidden_size"], QFORMER["intermediate_size"], 12, scale, bert_names)
    qformer.encoder_hidden_size = vision.hidden_size
    opt_names = ("num_attention_heads", "hidden_size", "ffn_dim", "num_hidden_layers")
    _scale(text, 32, OPT_2_7B["hidden_size"], OPT_2_7B["ffn_dim"], 32, scale, opt_names)
    text.word_embed_proj_dim = text.hidden_size
    # Embeddings scale with width x vocabulary, the layers with width^2 x depth: vocabulary / scale^2 keeps their
    # share of the language model (the tokenizer uses the first ids only).
    text.vocab_size = max(text.vocab_size, round(OPT_2_7B["vocab_size"] / scale**2))
    config.num_query_tokens = 32
    processor = AutoProcessor.from_pretrained(BLIP2_OPT_TINY)
    processor.num_query_tokens = config.num_query_tokens
    processor.image_processor.size = {"height": image_size, "width": image_size}
    return common.save_config_dir(f"config-blip2-opt-medium-s{scale}-{image_size}px", config, processor)


def tiny_blip2_config_dir(image_size: int) -> Path:
    """configs/blip2-opt-tiny at ``image_size`` (for --quick)."""
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(BLIP2_OPT_TINY)
    config.vision_config.image_size = image_size
    processor = AutoProcessor.from_pretrained(BLIP2_OPT_TINY)
    processor.image_processor.size = {"height": image_size, "width": image_size}
    return common.save_config_dir(f"config-blip2-opt-tiny-{image_size}px", config, processor)


# ------------------------------------------------------------------------------------------ training children


def build_blip(spec: dict[str, Any]):
    import dataclasses

    import torch

    from retina_vqa.data.preprocessing import prepare_split
    from retina_vqa.training.model_setup import load_model

    processor = common.load_processor(spec["image_size"])
    dargs = common.data_args(spec["dataset_dir"])
    raw = common.load_split(Path(spec["dataset_dir"]), "train")
    prepared = prepare_split(raw, processor.tokenizer, dargs, with_answers=True, description="train")
    collator = common.recipe_collator(processor, dargs)
    model_args = common.model_arguments(spec["size"], spec["image_size"], processor.tokenizer)
    model_args = dataclasses.replace(model_args, **freeze_flags(spec["variant"]))
    torch.manual_seed(0)
    return load_model(model_args, processor), prepared, processor, collator


def build_blip2(spec: dict[str, Any]):
    import torch

    from retina_vqa.arguments import ModelArguments
    from retina_vqa.data.collator import PromptCollator
    from retina_vqa.data.preprocessing import prepare_split
    from retina_vqa.training.model_setup import load_family, load_model, load_processor

    model_args = ModelArguments(model_name_or_path="", config_name=spec["config_dir"], **freeze_flags(spec["variant"]))
    processor = load_processor(model_args)
    family = load_family(model_args, processor)
    layout = family.layout
    dargs = common.data_args(spec["dataset_dir"])
    raw = common.load_split(Path(spec["dataset_dir"]), "train")
    prepared = prepare_split(raw, processor, dargs, True, "train", family)
    collator = PromptCollator.from_layout(layout, processor.image_processor, max_image_side=dargs.max_image_side)
    torch.manual_seed(0)
    return load_model(model_args, processor), prepared, processor, collator


def child(spec: dict[str, Any]) -> None:
    """One short training run of one variant; prints its counts, samples/s and own peak RSS as JSON."""
    import train_throughput

    from retina_vqa.models.lora import apply_lora, parameter_counts

    common.quiet()
    model, prepared, processor, collator = (build_blip if spec["family"] == "blip" else build_blip2)(spec)
    if spec["variant"] == "lora":
        model = apply_lora(model, LORA_R, *lora_settings())
    counts = parameter_counts(model)
    parts = trainable_by_part(model)
    samples_per_s = train_throughput.run_recipe(
        model, prepared, processor, collator, spec["batch_size"], spec["steps"], spec["warmup_steps"], True, 0
    )
    result = {"samples_per_s": samples_per_s, **counts, "trainable_by_part": parts}
    print(json.dumps({**result, "self_peak_rss_mb": common.peak_rss_mb()}))


def wrap(command: list[str]) -> None:
    """Run the child and report the peak RSS of the children of this (otherwise idle) process."""
    common.report_child_peak_rss(command)


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    here = str(Path(__file__).resolve())
    command = [sys.executable, here, "--_wrap", sys.executable, here, "--_child", json.dumps(spec)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{spec['family']} {spec['variant']} run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_training(label: str, base_spec: dict[str, Any], variants: tuple[str, ...], repeats: int):
    """Alternate fresh-process runs of the variants; samples/s and peak RSS medians, ratios to ``full``."""
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}

    def one(variant: str):
        def run() -> float:
            result = run_child({**base_spec, "variant": variant})
            runs[variant].append(result)
            print(f"  {label} {variant}: peak RSS {result['peak_rss_mb']:,.0f} MiB", file=sys.stderr, flush=True)
            return result["samples_per_s"]

        return run

    print(f"[{label}] {json.dumps({k: v for k, v in base_spec.items() if k != 'dataset_dir'})}", file=sys.stderr)
    speed = common.summarise(common.alternate({v: one(v) for v in variants}, repeats), baseline="full")
    memory = common.summarise({v: [r["peak_rss_mb"] for r in runs[v]] for v in variants}, baseline="full")
    rows = []
    for variant in variants:
        last = runs[variant][-1]  # the counts are the same in every run
        trainable, total = last["trainable_parameters"], last["total_parameters"]
        rows.append(
            {
                "variant": variant,
                "trainable_parameters": trainable,
                "total_parameters": total,
                "trainable_by_part": last["trainable_by_part"],
                "samples_per_s": speed[variant],
                "peak_rss_mb": memory[variant],
                # What weights, gradients and AdamW take in fp32 (these runs): the rest of the peak is activations,
                # the data and the Python/torch runtime.
                "state_fp32_mib": state_estimates(trainable, total)["fp32_weights_gib"] * 1024,
            }
        )
    setup = {k: v for k, v in base_spec.items() if k != "dataset_dir"}
    return {"label": label, **setup, "repeats": repeats, "variants": rows}


def dataset_for(batch_size: int, steps: int, image_size: int) -> Path:
    images = max(8, -(-batch_size * steps // 13) + 1)
    return common.synthetic_dataset(images, 4, image_size)


def part_blip(args: argparse.Namespace) -> dict[str, Any]:
    spec = {
        "family": "blip",
        "size": args.blip_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "dataset_dir": str(dataset_for(args.batch_size, args.steps, args.image_size)),
    }
    return measure_training(f"blip {args.blip_size}", spec, VARIANTS["blip"], args.repeats)


def part_blip2_medium(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        label, config_dir = "blip2-opt tiny", tiny_blip2_config_dir(args.medium_image_size)
    else:
        label = f"blip2-opt medium (1/{args.medium_scale})"
        config_dir = medium_config_dir(args.medium_scale, args.medium_image_size)
    spec = {
        "family": "blip-2",
        "size": "tiny" if args.quick else f"medium-1/{args.medium_scale}",
        "config_dir": str(config_dir),
        "image_size": args.medium_image_size,
        "batch_size": args.medium_batch_size,
        "steps": args.medium_steps,
        "warmup_steps": args.warmup_steps,
        "dataset_dir": str(dataset_for(args.medium_batch_size, args.medium_steps, args.medium_image_size)),
    }
    return measure_training(label, spec, VARIANTS["blip-2"], args.repeats)


# ---------------------------------------------------------------------------------------------------- output


def _millions(n: int) -> float:
    return n / 1e6


def _parts(parts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(parts.items(), key=lambda kv: -kv[1]))


def print_training(entry: dict[str, Any]) -> None:
    rows = []
    for row in entry["variants"]:
        speed, memory = row["samples_per_s"], row["peak_rss_mb"]
        rows.append(
            [
                row["variant"],
                _millions(row["trainable_parameters"]),
                _millions(row["total_parameters"]),
                f"{100 * row['trainable_parameters'] / row['total_parameters']:.2f}%",
                speed["median"],
                speed["ratio_vs_full"],
                memory["median"],
                memory["ratio_vs_full"],
                row["state_fp32_mib"],
            ]
        )
    common.print_table(
        f"{entry['label']}, {entry['image_size']} px, batch {entry['batch_size']} x {entry['steps']} steps "
        f"({entry['warmup_steps']} untimed), median of {entry['repeats']}; one fresh process per run",
        [
            "variant",
            "trainable (M)",
            "total (M)",
            "trainable",
            "samples/s",
            "/ full",
            "peak RSS (MiB)",
            "/ full",
            "fp32 state est. (MiB)",
        ],
        rows,
    )
    for row in entry["variants"]:
        print(f"  {row['variant']} trains: {_parts(row['trainable_by_part'])}")


def print_meta(rows: list[dict[str, Any]]) -> None:
    common.print_table(
        "BLIP-2 at published sizes, counted on the meta device; training state without activations (GiB): "
        "bf16 mixed = 2 B x total + 14 B x trainable; fp32 weights (the Trainer's --bf16 autocast, or fp32) = "
        "4 B x total + 12 B x trainable",
        ["model", "variant", "trainable (M)", "total (M)", "trainable", "bf16 mixed", "/ full", "fp32 weights"],
        [
            [
                r["model"],
                r["variant"],
                _millions(r["trainable_parameters"]),
                _millions(r["total_parameters"]),
                f"{100 * r['trainable_fraction']:.2f}%",
                r["bf16_mixed_gib"],
                round(r["bf16_mixed_vs_full"], 3),
                r["fp32_weights_gib"],
            ]
            for r in rows
        ],
    )
    for r in rows:
        print(f"  {r['model']} {r['variant']} trains: {_parts(r['trainable_by_part'])}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", default="blip,blip2_meta,blip2_medium", help="comma-separated: blip, blip2_meta, blip2_medium"
    )
    parser.add_argument("--blip_size", default="full", choices=["full", "tiny"], help="BLIP VQA architecture")
    parser.add_argument("--image_size", type=int, default=128, help="BLIP VQA image size")
    parser.add_argument("--batch_size", type=int, default=8, help="BLIP VQA training batch")
    parser.add_argument("--steps", type=int, default=4, help="BLIP VQA training steps per run")
    parser.add_argument("--warmup_steps", type=int, default=1, help="first steps of a run left out of the timing")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (alternated)")
    parser.add_argument("--medium_scale", type=int, default=4, help="medium BLIP-2: 2.7B widths and depths / this")
    parser.add_argument("--medium_image_size", type=int, default=224, help="medium BLIP-2 (patch 14)")
    parser.add_argument("--medium_batch_size", type=int, default=8, help="medium BLIP-2 training batch")
    parser.add_argument("--medium_steps", type=int, default=4, help="medium BLIP-2 training steps per run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny BLIP and tiny BLIP-2 at 128 px, batch 8, 3 steps, 1 repeat (meta counts at real size)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.blip_size, args.steps, args.medium_steps, args.repeats = "tiny", 3, 3, 1
        args.medium_image_size = 128
    parts = [part for part in args.parts.split(",") if part]
    unknown = set(parts) - {"blip", "blip2_meta", "blip2_medium"}
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}: blip, blip2_meta, blip2_medium")
    common.quiet()

    payload: dict[str, Any] = {"quick": args.quick, "lora_r": LORA_R, "lora_alpha_dropout": lora_settings()}
    if "blip2_meta" in parts:
        payload["blip2_meta"] = part_blip2_meta(args)
    if "blip" in parts:
        payload["blip"] = part_blip(args)
    if "blip2_medium" in parts:
        payload["blip2_medium"] = part_blip2_medium(args)

    common.emit_json("fine_tuning_modes", payload)
    if "blip" in payload:
        print_training(payload["blip"])
    if "blip2_meta" in payload:
        print_meta(payload["blip2_meta"])
    if "blip2_medium" in payload:
        print_training(payload["blip2_medium"])
    return payload


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_wrap":
        wrap(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--_child":
        child(json.loads(sys.argv[2]))
    else:
        main()
