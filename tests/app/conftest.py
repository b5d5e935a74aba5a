"""Fixtures of the web app tests: a tiny model trained a few steps by run_vqa.py, and fundus photographs."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from retina_vqa.data.images import load_image
from retina_vqa.data.loading import load_dataset_dir

from ..helpers import ROOT, TINY_CONFIG


@pytest.fixture(scope="session")
def app_model_dir(tiny_dataset_dir, tmp_path_factory) -> Path:
    """The tiny BLIP trained 30 steps by run_vqa.py (enough to answer with words), saved with its answer
    candidates as a user's run saves them."""
    sys.path.insert(0, str(ROOT))
    import run_vqa

    output_dir = tmp_path_factory.mktemp("app-model") / "out"
    run_vqa.main(
        [
            "--model_name_or_path", "",
            "--config_name", str(TINY_CONFIG),
            "--dataset_dir", str(tiny_dataset_dir),
            "--output_dir", str(output_dir),
            "--do_train",
            "--max_steps", "30",
            "--learning_rate", "3e-3",
            "--per_device_train_batch_size", "8",
            "--save_strategy", "no",
            "--report_to", "none",
            "--seed", "0",
            "--generation_max_length", "12",
            "--disable_tqdm", "true",
            "--dataloader_num_workers", "0",
        ]
    )  # fmt: skip
    return output_dir


@pytest.fixture(scope="session")
def fundus_files(tiny_dataset_dir, tmp_path_factory) -> dict[str, Path]:
    """Test-split photographs as a user has them: ``fundus.jpg`` (EXIF orientation 6: a viewer turns it a quarter
    clockwise), ``second.png``, plus ``broken.jpg`` (cut short), ``notes.txt`` (text) and ``huge.jpg`` (1.5 MB,
    over the 1 MB upload limit the browser tests set)."""
    folder = tmp_path_factory.mktemp("uploads")
    rows = load_dataset_dir(str(tiny_dataset_dir))["test"]
    images = list(dict.fromkeys(row["image_id"] for row in rows))
    by_id = {row["image_id"]: load_image(row["image"]) for row in rows}
    first = by_id[images[0]].convert("RGB").crop((0, 0, 64, 48))  # not square: a rotation shows in the size
    exif = Image.Exif()
    exif[0x0112] = 6
    first.save(folder / "fundus.jpg", quality=95, exif=exif)
    by_id[images[1]].convert("RGB").save(folder / "second.png")
    data = io.BytesIO()
    first.save(data, format="JPEG", quality=95)
    (folder / "broken.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    (folder / "notes.txt").write_text("patient notes, not a photograph\n")
    (folder / "huge.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(1_500_000))
    return {path.name: path for path in folder.iterdir()}
