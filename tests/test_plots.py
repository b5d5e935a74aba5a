"""The model-free pictures of a run (retina_vqa.plots) on a real tiny run: samples and the end-of-run set."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retina_vqa import plots

from .helpers import ROOT, TINY_CONFIG, assert_png

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402
from retina_vqa.data.loading import load_dataset_dir


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset_dir, tmp_path_factory) -> Path:
    """A 4-step train/eval/predict run of the tiny model: trainer_state.json, predictions.jsonl, weights."""
    output_dir = tmp_path_factory.mktemp("vizrun") / "out"
    run_vqa.main(
        [
            "--model_name_or_path", "", "--config_name", str(TINY_CONFIG),
            "--dataset_dir", str(tiny_dataset_dir), "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--report_to", "none", "--seed", "0", "--generation_max_length", "12", "--disable_tqdm", "true",
            "--dataloader_num_workers", "0", "--do_train", "--do_eval", "--do_predict", "--max_steps", "4",
            "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "4",
        ]
    )  # fmt: skip
    return output_dir


def test_samples_rejects_ids_outside_the_split(tiny_dataset_dir, tmp_path):
    dataset = load_dataset_dir(str(tiny_dataset_dir))["test"]
    records = [{"id": len(dataset), "question": "q", "prediction": "p"}]
    with pytest.raises(ValueError, match="outside the split"):
        plots.plot_samples(records, dataset, tmp_path / "x.png")


def test_plot_run_writes_the_end_of_run_pictures(tiny_run, tiny_dataset_dir, tmp_path, caplog):
    for name in ("trainer_state.json", "predictions.jsonl"):
        shutil.copy(tiny_run / name, tmp_path / name)
    test_split = load_dataset_dir(str(tiny_dataset_dir))["test"]
    written = plots.plot_run(tmp_path, test_split)
    assert sorted(p.name for p in written) == ["confusion.png", "curves.png", "samples.png"]
    for path in written:
        with Image.open(path) as image:
            assert np.asarray(image.convert("RGB")).std() > 0
    # A split that does not match the predictions is logged, not raised: the other pictures still come.
    with caplog.at_level("WARNING", logger="retina_vqa.plots"):
        written = plots.plot_run(tmp_path, test_split.select(range(2)))
    assert sorted(p.name for p in written) == ["confusion.png", "curves.png"]
    assert "samples.png" in caplog.text


def test_plots_imports_no_model_code():
    """run_vqa.py plots at the end of every run: that must not pull in Grad-CAM, torch or the synthetic generator."""
    import subprocess

    code = (
        "import sys, retina_vqa.plots; print(sorted(m for m in sys.modules if m.startswith(('retina_vqa', 'torch'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "'retina_vqa.plots'" in loaded
    for module in ("retina_vqa.explain", "retina_vqa.models", "retina_vqa.synthetic", "retina_vqa.visualize", "torch"):
        assert f"'{module}" not in loaded


def test_roc_of_referable_dr_marks_the_operating_points(tmp_path):
    from retina_vqa.metrics.screening import OperatingPoint
    from retina_vqa.questions import DIAGNOSIS_ANSWERS as G

    rng = np.random.default_rng(0)
    records = []
    for _ in range(40):
        grade = int(rng.integers(0, 5))
        p = rng.dirichlet(np.ones(5) + 4 * np.eye(5)[grade])  # leaning to the right grade
        scores = dict(zip(G, p.tolist(), strict=True))
        records.append({"question_type": "diagnosis", "reference": G[grade], "prediction": G[int(p.argmax())],
                        "correct": bool(p.argmax() == grade), "answer_scores": scores})  # fmt: skip
    records.append({"question_type": "abnormality", "reference": "yes", "prediction": "no", "correct": False})
    points = [OperatingPoint("high_sensitivity", 0.9, 0.2, 0.9, 0.5)]
    assert plots.plot_referable_roc(records, tmp_path / "roc.png", points) == (550, 550)
    assert_png(tmp_path / "roc.png", (550, 550))
    with pytest.raises(ValueError):  # one class only: no ROC curve
        plots.plot_referable_roc([r for r in records[:40] if r["reference"] in G[2:]], tmp_path / "x.png")
