"""FLOPs per training sample of the full blip-vqa-base architecture, and (with CUDA) samples/s and MFU.

Part 1, on any device: ``torch.utils.flop_counter.FlopCounterMode`` counts one training step (forward +
backward, the recipe's model from ``models.loading.load_model``) of the full ``BlipConfig()`` architecture at
``--image_size`` (384) with a ``--question_tokens`` (32) question and an ``--answer_tokens`` (8) answer,
batch ``--flop_batch_size`` (1), every question with its own image: FLOPs per training sample as usually
quoted (the issue quotes 411 GFLOP). Matrix multiplications and attention are counted (2 FLOPs per
multiply-add); element-wise work is not, as usual for MFU.

Part 2, only when CUDA is available: the recipe's training path (``prepare_split`` + ``VqaCollator`` +
``VqaTrainer``) at 384 px, bf16, batch ``--batch_size`` (32), ``--steps`` steps (the first ``--warmup_steps``
untimed): the recipe's defaults (``group_by_image``, fused attention), then ``group_by_image`` off, then
eager attention. Reports samples/s and

* model TFLOP/s = samples/s x FLOPs per sample of part 1 (the work a one-image-per-question step would do),
* executed TFLOP/s = samples/s x FLOPs per sample counted on a real batch of that run (image sharing and
  dynamic padding do less work than part 1's sample),

each against the card's dense bf16 peak (``--peak_tflops``, else looked up from the device name): MFU.
Without CUDA, part 2 is skipped and said so.

    python bench/gpu_check.py            # on a GPU machine
    python bench/gpu_check.py --quick    # CPU smoke test: part 1 only (batch 1)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import common
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def _module_flops(counter: FlopCounterMode) -> dict[str, int]:
    """FLOPs per top-level part of the model (vision_model, text_encoder, text_decoder)."""
    parts: dict[str, int] = {}
    for name, ops in counter.get_flop_counts().items():
        pieces = name.split(".")
        if len(pieces) == 2:
            parts[pieces[1]] = int(sum(ops.values()))
    return parts


def count_step_flops(model, batch: dict[str, torch.Tensor], autocast: bool = False) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward + backward pass over ``batch``, and the forward FLOPs per part of the model.

    (Per part only for the forward: FlopCounterMode's module attribution of backward ops overlaps.) Counted
    with eager attention: the flop counter knows the fused kernels of CUDA but not torch's CPU one, and the
    arithmetic is the same.
    """
    from retina_vqa.models.attention import attention_implementation, set_attention_implementation

    model.train()
    device_type = next(model.parameters()).device.type
    implementation = attention_implementation(model)
    set_attention_implementation(model, "eager")
    try:
        with FlopCounterMode(display=False) as counter:
            with (
                FlopCounterMode(display=False) as forward,
                torch.autocast(device_type, torch.bfloat16, enabled=autocast),
            ):
                loss = model(**batch).loss
            loss.backward()
    finally:
        set_attention_implementation(model, implementation)
    model.zero_grad(set_to_none=True)
    parts = _module_flops(forward)
    parts["total"] = int(forward.get_total_flops())
    return int(counter.get_total_flops()), parts


def synthetic_batch(processor, batch_size: int, image_size: int, question_tokens: int, answer_tokens: int):
    """Random tokens and pixels of the given shapes, one image per question; labels as the collator makes them."""
    tokenizer = processor.tokenizer
    low, high = 6, len(tokenizer)
    input_ids = torch.randint(low, high, (batch_size, question_tokens))
    input_ids[:, 0], input_ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    decoder_input_ids = torch.randint(low, high, (batch_size, answer_tokens))
    decoder_input_ids[:, 0], decoder_input_ids[:, -1] = tokenizer.bos_token_id, tokenizer.sep_token_id
    labels = decoder_input_ids.clone()
    labels[:, 0] = -100
    return {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": torch.ones_like(decoder_input_ids),
        "labels": labels,
    }


class SyncedStepClock(TrainerCallback):
    """Wall time at the end of each optimizer step, after the GPU has finished it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.times = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def gpu_training(args: argparse.Namespace, processor, flops_per_sample: int, peak: float | None) -> list[dict]:
    from retina_vqa.data.preprocessing import prepare_split
    from retina_vqa.models.attention import set_attention_implementation

    rows = args.batch_size * args.steps
    dataset_dir = common.synthetic_dataset(max(8, -(-rows // 13) + 1), 4, args.image_size)
    dargs = common.data_args(dataset_dir)
    prepared = prepare_split(common.load_split(dataset_dir, "train"), processor.tokenizer, dargs, True, "train")
    collator = common.recipe_collator(processor, dargs)
    model = common.recipe_model("full", args.image_size, processor).cuda()
    results = []
    # The recipe (image sharing, fused attention), then without image sharing, then with eager attention.
    for group, attention in ((True, "sdpa"), (False, "sdpa"), (True, "eager")):
        set_attention_implementation(model, attention)
        # Executed FLOPs per sample on a real batch of this order (shared images, dynamic padding).
        loader = common.recipe_loader(prepared, collator, args.batch_size, group_by_image=group)
        batch = {k: v.cuda() for k, v in next(iter(loader)).items()}
        executed, _ = count_step_flops(model, batch, autocast=True)
        executed_per_sample = executed / batch["input_ids"].shape[0]
        clock = SyncedStepClock()
        common.train_recipe(
            model,
            prepared,
            processor,
            collator,
            clock,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=2e-5,
            bf16=True,
            dataloader_num_workers=args.num_workers,
            group_by_image=group,
        )
        timed = len(clock.times) - 1 - args.warmup_steps
        samples_per_s = timed * args.batch_size / (clock.times[-1] - clock.times[args.warmup_steps])
        model_tflops = samples_per_s * flops_per_sample / 1e12
        executed_tflops = samples_per_s * executed_per_sample / 1e12
        results.append(
            {
                "group_by_image": group,
                "attn_implementation": attention,
                "samples_per_s": round(samples_per_s, 2),
                "executed_gflop_per_sample": round(executed_per_sample / 1e9, 1),
                "model_tflops": round(model_tflops, 1),
                "executed_tflops": round(executed_tflops, 1),
                "model_mfu": round(model_tflops / peak, 4) if peak else None,
                "executed_mfu": round(executed_tflops / peak, 4) if peak else None,
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
        )
        print(f"  group_by_image={group} {attention}: {samples_per_s:.1f} samples/s", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=384)
    parser.add_argument("--question_tokens", type=int, default=32)
    parser.add_argument("--answer_tokens", type=int, default=8)
    parser.add_argument("--flop_batch_size", type=int, default=1, help="batch of the FLOP count (part 1)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=23)
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--num_workers", type=int, default=8, help="DataLoader workers of the GPU run")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the card's dense bf16 peak")
    parser.add_argument("--quick", action="store_true", help="part 1 on CPU only (also skips part 2 on a GPU)")
    args = parser.parse_args(argv)
    common.quiet()

    processor = common.load_processor(args.image_size)
    torch.manual_seed(0)
    model = common.recipe_model("full", args.image_size, processor)
    batch = synthetic_batch(processor, args.flop_batch_size, args.image_size, args.question_tokens, args.answer_tokens)
    start = time.perf_counter()
    total, parts = count_step_flops(model, batch)
    count_seconds = time.perf_counter() - start
    per_sample = total / args.flop_batch_size
    n_params = common.count_parameters(model)
    del model

    payload: dict[str, Any] = {
        "quick": args.quick,
        "parameters": n_params,
        "image_size": args.image_size,
        "question_tokens": args.question_tokens,
        "answer_tokens": args.answer_tokens,
        "flop_batch_size": args.flop_batch_size,
        "gflop_per_sample": round(per_sample / 1e9, 1),
        "forward_gflop_per_sample_by_part": {k: round(v / args.flop_batch_size / 1e9, 1) for k, v in parts.items()},
        "issue_quote_gflop": 411,
        "flop_count_seconds_cpu": round(count_seconds, 1),
    }
    common.print_table(
        f"FLOPs per training sample (forward + backward), {n_params / 1e6:.0f}M parameters, {args.image_size} px, "
        f"question {args.question_tokens} / answer {args.answer_tokens} tokens",
        ["part", "GFLOP/sample"],
        [[f"{k} (forward)", v] for k, v in payload["forward_gflop_per_sample_by_part"].items()]
        + [["forward + backward", payload["gflop_per_sample"]]],
    )

    if torch.cuda.is_available() and not args.quick:
        device = torch.cuda.get_device_name(0)
        peak = args.peak_tflops or peak_tflops(device)
        payload.update({"gpu": device, "peak_bf16_tflops": peak, "runs": gpu_training(args, processor, total, peak)})
        common.print_table(
            f"{device}: full BLIP at {args.image_size} px, bf16, batch {args.batch_size}, peak {peak} TFLOP/s",
            [
                "group_by_image",
                "attention",
                "samples/s",
                "GFLOP/sample run",
                "model TFLOP/s",
                "MFU",
                "exec TFLOP/s",
                "MFU",
            ],
            [
                [
                    str(r["group_by_image"]),
                    r["attn_implementation"],
                    r["samples_per_s"],
                    r["executed_gflop_per_sample"],
                    r["model_tflops"],
                    r["model_mfu"],
                    r["executed_tflops"],
                    r["executed_mfu"],
                ]
                for r in payload["runs"]
            ],
        )
    else:
        reason = "--quick" if args.quick else "CUDA is not available"
        payload["gpu_skipped"] = reason
        print(f"\nGPU part skipped ({reason}): only the FLOP count above was measured.")
    common.emit_json("gpu_check", payload)
    return payload


if __name__ == "__main__":
    main()
