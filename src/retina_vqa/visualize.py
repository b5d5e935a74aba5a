"""Pictures of a run: sample predictions, training curves, the diagnosis confusion matrix, and Grad-CAM maps.

    python -m retina_vqa.visualize samples --predictions OUT/predictions.jsonl --dataset_dir DATA \\
        --split test --output samples.png [--num 16 --seed 0]
    python -m retina_vqa.visualize curves --trainer_state OUT/trainer_state.json --output curves.png
    python -m retina_vqa.visualize confusion --predictions OUT/predictions.jsonl --output confusion.png
    python -m retina_vqa.visualize attention --model_name_or_path OUT --image fundus.png \\
        --question "are there haemorrhages?" --output att.png [--layer -1 --per_token]
    python -m retina_vqa.visualize pointing --model_name_or_path OUT --dataset_dir DATA --split test \\
        [--max_examples 200 --tolerance 0.02 --output_json pointing.json]

``attention`` and ``pointing`` read any saved model of the three families (BLIP VQA, BLIP-2, InstructBLIP; a
BLIP-2's prompt is the one saved with it). ``--layer`` counts the layers that cross-attend to the image: BLIP's
question-encoder layers, or the Q-Former layers that have a cross-attention (every
``cross_attention_frequency``-th); -1 is the last. ``--per_token`` draws one map per question token (BLIP) or
per learned query (BLIP-2, InstructBLIP).

This module is the command line only: the model-free pictures are drawn by `retina_vqa.plots`, Grad-CAM and
the pointing game by `retina_vqa.explain`. Errors (bad paths, unreadable images, wrong columns or splits)
end the command with one line naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .data.images import ImageLoadError
from .data.loading import load_dataset_dir
from .plots import plot_confusion, plot_curves, plot_samples, read_jsonl

# The one meaning of --layer for every family (explain.gradcam.cross_attention_layers).
LAYER_HELP = "index into the layers that cross-attend to the image (default -1: the last of them)"


def _load_split(dataset_dir: str | Path, split: str) -> Any:
    """One split of a dataset folder; `load_dataset_dir` loads the folder, this names a missing ``--split``."""
    splits = load_dataset_dir(str(dataset_dir))
    if split not in splits:
        raise ValueError(f"Split {split!r} not in {dataset_dir}; it has {sorted(splits)}.")
    return splits[split]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m retina_vqa.visualize`` parser: one subcommand per picture or score."""
    parser = argparse.ArgumentParser(prog="python -m retina_vqa.visualize", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    samples = commands.add_parser("samples", help="grid of random predictions, right in green, wrong in red")
    samples.add_argument("--predictions", required=True, help="predictions.jsonl of a --do_predict run")
    samples.add_argument("--dataset_dir", required=True, help="the save_to_disk folder that was predicted")
    samples.add_argument("--split", default="test")
    samples.add_argument("--image_column", default="image")
    samples.add_argument("--output", required=True)
    samples.add_argument("--num", type=int, default=16)
    samples.add_argument("--seed", type=int, default=0)

    curves = commands.add_parser("curves", help="loss and eval metrics vs step")
    curves.add_argument("--trainer_state", required=True)
    curves.add_argument("--output", required=True)

    confusion = commands.add_parser("confusion", help="diagnosis confusion matrix")
    confusion.add_argument("--predictions", required=True)
    confusion.add_argument("--question_type", default="diagnosis")
    confusion.add_argument("--output", required=True)

    attention = commands.add_parser(
        "attention", help="Grad-CAM of the image cross-attention (BLIP: question encoder; BLIP-2: Q-Former)"
    )
    attention.add_argument("--model_name_or_path", required=True)
    attention.add_argument("--image", required=True)
    attention.add_argument("--question", required=True)
    attention.add_argument("--output", required=True)
    attention.add_argument("--layer", type=int, default=-1, help=LAYER_HELP)
    attention.add_argument(
        "--per_token", action="store_true", help="one map per question token (BLIP) or learned query (BLIP-2)"
    )

    pointing = commands.add_parser("pointing", help="pointing-game hit rates on lesion-presence questions")
    pointing.add_argument("--model_name_or_path", required=True)
    pointing.add_argument("--dataset_dir", required=True)
    pointing.add_argument("--split", default="test")
    pointing.add_argument("--max_examples", type=int, default=200)
    pointing.add_argument("--tolerance", type=float, default=0.02)
    pointing.add_argument("--layer", type=int, default=-1, help=LAYER_HELP)
    pointing.add_argument("--output_json", default=None)
    return parser


def main(argv: list[str] | None = None) -> Any:
    """Run one subcommand. Returns the PNG's pixel size (width, height), or the pointing-game result."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ImageLoadError, OSError, ValueError, KeyError) as error:
        # Bad paths, unreadable images, wrong columns: one line naming the problem, no traceback.
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


def _run(args: argparse.Namespace) -> Any:
    if args.command == "samples":
        dataset = _load_split(args.dataset_dir, args.split)
        records = read_jsonl(args.predictions)
        size = plot_samples(records, dataset, args.output, args.num, args.seed, args.image_column)
    elif args.command == "curves":
        size = plot_curves(json.loads(Path(args.trainer_state).read_text()), args.output)
    elif args.command == "confusion":
        size = plot_confusion(read_jsonl(args.predictions), args.output, args.question_type)
    else:
        # Only the model subcommands need the model code (torch, transformers, Grad-CAM hooks): imported here
        # so that the plotting subcommands above do not pay for it.
        from .explain import format_pointing, plot_attention, pointing_game
        from .models.loading import load_for_inference

        # Loaded with fused attention for answering; gradcam_map switches the cross-attention to eager while it
        # reads the attention probabilities and restores it after. Any family: gradcam_map dispatches on it.
        model, processor = load_for_inference(args.model_name_or_path)
        if args.command == "attention":
            size = plot_attention(model, processor, args.image, args.question, args.output, args.layer, args.per_token)
        else:
            dataset = _load_split(args.dataset_dir, args.split)
            result = pointing_game(model, processor, dataset, args.max_examples, args.tolerance, args.layer)
            print(format_pointing(result))
            if args.output_json:
                Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
            return result
    print(f"wrote {args.output} ({size[0]}x{size[1]} px)")
    return size


if __name__ == "__main__":
    main()
