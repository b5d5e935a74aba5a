"""Helpers the tests share: the shipped tiny configs, a random tiny BLIP, run_vqa.py's arguments for a tiny run,
the command a user types to launch several processes, and readers of what a run writes. (Fixtures live in
conftest.py; helpers are imported from here, as pytest advises.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor

from retina_vqa.models.blip import decode_answers, encode_images, encode_questions

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "blip-tiny"


def make_tiny_model(init_range: float = 0.5, seed: int = 0):
    """A random tiny BLIP whose answers depend on its inputs (a wide init makes untrained outputs vary)."""
    from retina_vqa.models.tiny_blip import random_tiny_blip

    return random_tiny_blip(TINY_CONFIG, init_range, seed)


def accelerate_launch(config_file: str, port: int, *script_args: str) -> list[str]:
    """The command `accelerate launch --config_file accelerate_configs/<config_file> run_vqa.py ARGS`, as a user
    types it (the real launcher, real processes), on its own port so tests never collide."""
    import sys

    config = ROOT / "accelerate_configs" / config_file
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
            str(port), str(ROOT / "run_vqa.py"), *script_args]  # fmt: skip


def _without_version(value):
    """A JSON value with every ``transformers_version`` left out (transformers writes the installed version)."""
    if isinstance(value, dict):
        return {k: _without_version(v) for k, v in value.items() if k != "transformers_version"}
    if isinstance(value, list):
        return [_without_version(v) for v in value]
    return value


def same_built_file(built: Path, shipped: Path) -> bool:
    """Whether a file a builder wrote equals the shipped one: byte for byte, except that JSON files may differ in
    the ``transformers_version`` that transformers stamps into them (a config built by another release)."""
    import filecmp
    import json

    if built.suffix == ".json" and shipped.suffix == ".json" and shipped.exists():
        return _without_version(json.loads(built.read_text())) == _without_version(json.loads(shipped.read_text()))
    return filecmp.cmp(built, shipped, shallow=False)


def fine_tune_args(
    data_dir: Path, output_dir: Path, start: Path, model, processor_dir: Path = TINY_CONFIG
) -> list[str]:
    """`common_args` fine-tuning `model`, saved with its processor in `start` (a checkpoint, not a config)."""
    model.save_pretrained(start)
    AutoProcessor.from_pretrained(processor_dir).save_pretrained(start)
    args = common_args(data_dir, output_dir)
    args[args.index("--model_name_or_path") + 1] = str(start)
    del args[args.index("--config_name") : args.index("--config_name") + 2]
    return args


def common_args(data_dir: Path, output_dir: Path) -> list[str]:
    return [
        "--model_name_or_path",
        "",
        "--config_name",
        str(TINY_CONFIG),
        "--dataset_dir",
        str(data_dir),
        "--output_dir",
        str(output_dir),
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--generation_max_length",
        "12",
        "--disable_tqdm",
        "true",
        "--dataloader_num_workers",
        "0",
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(output_dir) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def blip_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """3 questions about 2 images, padded questions, [DEC]-started answers."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(6, 280, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = 0
    answers = torch.randint(6, 280, (3, 4), generator=generator)
    answers[:, 0] = 5  # [DEC]
    return {
        "pixel_values": torch.randn(2, 3, 128, 128, generator=generator),
        "image_index": torch.tensor([0, 1, 1]),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": answers,
        "labels": answers,
    }


def blip_logits(model, batch) -> torch.Tensor:
    """The answer decoder's logits for the batch's answers, through the recipe's steps."""
    images = encode_images(model, batch["pixel_values"]).index_select(0, batch["image_index"])
    questions = encode_questions(model, images, batch["input_ids"], batch["attention_mask"])
    return decode_answers(model, questions, batch["attention_mask"], batch["decoder_input_ids"]).logits


def assert_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 0
