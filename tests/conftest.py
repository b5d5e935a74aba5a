"""Shared fixtures: the shipped tiny BLIP config and a small synthetic RetinaVQA set on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The shared comparison helpers report their values on failure, as a test's own assertions do.
pytest.register_assert_rewrite("tests.same_answers")

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "blip-tiny"

# Everything here runs offline and without tracking services.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_processor():
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(TINY_CONFIG)


def make_tiny_model(init_range: float = 0.5, seed: int = 0):
    """A random tiny BLIP whose answers depend on its inputs (a wide init makes untrained outputs vary)."""
    from retina_vqa.models.tiny_blip import random_tiny_blip

    return random_tiny_blip(TINY_CONFIG, init_range, seed)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """6/3/3 images at 64 px, 13 questions each, saved with save_to_disk."""
    from retina_vqa.synthetic import generate_dataset

    path = tmp_path_factory.mktemp("data") / "retinavqa"
    generate_dataset(6, 3, 3, image_size=64, seed=0, num_workers=1).save_to_disk(str(path))
    return path


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
