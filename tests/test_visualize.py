"""The visualisation commands on a real tiny run; Grad-CAM maps of the question encoder's cross-attention."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from retina_vqa import visualize
from retina_vqa.modeling import resize_image_size

from .conftest import ROOT, TINY_CONFIG, make_tiny_model

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset_dir, tmp_path_factory) -> Path:
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


@pytest.fixture(scope="module")
def fundus(tiny_dataset_dir) -> Image.Image:
    return datasets.load_from_disk(str(tiny_dataset_dir))["test"][0]["image"].convert("RGB")


def assert_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as image:
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 0


def test_samples_curves_confusion_write_pngs(tiny_run, tiny_dataset_dir, tmp_path):
    predictions = str(tiny_run / "predictions.jsonl")
    size = visualize.main(
        ["samples", "--predictions", predictions, "--dataset_dir", str(tiny_dataset_dir), "--split", "test",
         "--output", str(tmp_path / "samples.png"), "--num", "6", "--seed", "0"]
    )  # fmt: skip
    assert size == (4 * 320, 2 * 420)
    assert_png(tmp_path / "samples.png", size)

    size = visualize.main(
        [
            "curves",
            "--trainer_state",
            str(tiny_run / "trainer_state.json"),
            "--output",
            str(tmp_path / "c.png"),
        ]
    )
    assert size == (3 * 550, 550)  # loss, eval metrics, exact match per question type
    assert_png(tmp_path / "c.png", size)

    size = visualize.main(["confusion", "--predictions", predictions, "--output", str(tmp_path / "m.png")])
    assert size == (700, 600)
    assert_png(tmp_path / "m.png", size)


def test_samples_rejects_ids_outside_the_split(tiny_dataset_dir, tmp_path):
    dataset = datasets.load_from_disk(str(tiny_dataset_dir))["test"]
    records = [{"id": len(dataset), "question": "q", "prediction": "p"}]
    with pytest.raises(ValueError, match="outside the split"):
        visualize.plot_samples(records, dataset, tmp_path / "x.png")


def assert_unit_map(heatmap: np.ndarray, shape: tuple[int, ...]) -> None:
    assert heatmap.shape == shape
    assert np.isfinite(heatmap).all()
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert heatmap.max() == pytest.approx(1.0)


def test_gradcam_map_has_the_patch_grid_shape(tiny_processor, fundus):
    model = make_tiny_model()
    heatmap, answer = visualize.gradcam_map(model, tiny_processor, fundus, "are there haemorrhages?")
    assert_unit_map(heatmap, (8, 8))  # 128 px / patch 16
    assert isinstance(answer, str)
    tokens = len(tiny_processor.tokenizer("are there haemorrhages?")["input_ids"])
    per_token, answer_again = visualize.gradcam_map(
        model, tiny_processor, fundus, "are there haemorrhages?", layer=0, per_token=True
    )
    assert per_token.shape == (tokens, 8, 8) and answer_again == answer
    for token_map in per_token:
        assert_unit_map(token_map, (8, 8))
    assert all(p.grad is None for p in model.parameters())  # the model's gradients are left alone


def test_gradcam_map_follows_the_image_size(tiny_processor, fundus):
    processor = copy.deepcopy(tiny_processor)
    processor.image_processor.size = {"height": 192, "width": 192}
    resized = make_tiny_model()
    resize_image_size(resized, 192)
    heatmap, _ = visualize.gradcam_map(resized, processor, fundus, "are there haemorrhages?")
    assert_unit_map(heatmap, (12, 12))
    # A 128 px model fed 192 px images interpolates its position embeddings on the fly.
    heatmap, _ = visualize.gradcam_map(make_tiny_model(), processor, fundus, "are there microaneurysms?")
    assert_unit_map(heatmap, (12, 12))


def test_gradcam_map_depends_on_the_cross_attention_gradient(tiny_processor, fundus):
    model = make_tiny_model()
    question = "are there haemorrhages?"
    normal, answer = visualize.gradcam_map(model, tiny_processor, fundus, question)

    def zero_gradient(module, args, output):
        if output[1].requires_grad:
            output[1].register_hook(torch.zeros_like)

    handle = model.text_encoder.encoder.layer[-1].crossattention.self.register_forward_hook(zero_gradient)
    try:
        blocked, blocked_answer = visualize.gradcam_map(model, tiny_processor, fundus, question)
    finally:
        handle.remove()
    assert blocked_answer == answer
    assert not np.allclose(normal, blocked)
    assert np.all(blocked == 0)  # no positive gradient, no evidence


def test_overlay_keeps_the_image_size(fundus):
    heatmap = np.zeros((8, 8), dtype=np.float32)
    heatmap[2, 5] = 1.0
    picture = visualize.overlay(fundus, heatmap)
    assert picture.size == fundus.size and picture.mode == "RGB"
    assert not np.array_equal(np.asarray(picture), np.asarray(fundus))


def test_lesion_mask_dilates_boxes_and_random_rate_is_the_area_share():
    boxes = [{"type": "haemorrhage", "x0": 10, "y0": 20, "x1": 14, "y1": 22}]
    assert visualize._lesion_mask(boxes, (64, 64), 0).sum() == 4 * 2
    assert visualize._lesion_mask(boxes, (64, 64), 1).sum() == 6 * 4
    fov = visualize._fov_mask((100, 100))
    assert fov[50, 50] and not fov[0, 0]
    assert fov.sum() == pytest.approx(np.pi * 47**2, rel=0.01)


def test_pointing_game_on_the_tiny_model(tiny_run, tiny_dataset_dir, tmp_path):
    output_json = tmp_path / "pointing.json"
    result = visualize.main(
        ["pointing", "--model_name_or_path", str(tiny_run), "--dataset_dir", str(tiny_dataset_dir), "--split",
         "test", "--max_examples", "20", "--tolerance", "0.02", "--output_json", str(output_json)]
    )  # fmt: skip
    assert json.loads(output_json.read_text()) == json.loads(json.dumps(result))
    overall = result["overall"]
    assert overall["count"] > 0
    for key in ("model", "random", "centre", "answered_yes"):
        assert 0.0 <= overall[key] <= 1.0
    assert 0.0 < overall["random"] < 1.0
    assert sum(s["count"] for s in result["by_question_type"].values()) == overall["count"]
    assert set(result["by_question_type"]) <= set(visualize.PRESENCE_LESION_TYPES)


def test_plot_run_writes_the_end_of_run_pictures(tiny_run, tiny_dataset_dir, tmp_path, caplog):
    import shutil

    for name in ("trainer_state.json", "predictions.jsonl"):
        shutil.copy(tiny_run / name, tmp_path / name)
    test_split = datasets.load_from_disk(str(tiny_dataset_dir))["test"]
    written = visualize.plot_run(tmp_path, test_split)
    assert sorted(p.name for p in written) == ["confusion.png", "curves.png", "samples.png"]
    for path in written:
        with Image.open(path) as image:
            assert np.asarray(image.convert("RGB")).std() > 0
    # A split that does not match the predictions is logged, not raised: the other pictures still come.
    with caplog.at_level("WARNING", logger="retina_vqa.visualize"):
        written = visualize.plot_run(tmp_path, test_split.select(range(2)))
    assert sorted(p.name for p in written) == ["confusion.png", "curves.png"]
    assert "samples.png" in caplog.text


def test_gradcam_works_on_a_fused_attention_model_and_restores_it(tiny_processor, fundus):
    from retina_vqa.attention import attention_implementation, set_attention_implementation

    eager = make_tiny_model()
    expected, answer = visualize.gradcam_map(eager, tiny_processor, fundus, "are there haemorrhages?")
    fused = make_tiny_model()
    set_attention_implementation(fused, "sdpa")
    heatmap, fused_answer = visualize.gradcam_map(fused, tiny_processor, fundus, "are there haemorrhages?")
    assert fused_answer == answer
    np.testing.assert_allclose(heatmap, expected, atol=1e-5)
    assert attention_implementation(fused) == "sdpa"


def test_cli_errors_are_one_line_naming_the_problem(tiny_run, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    cases = [
        (["attention", "--model_name_or_path", str(tiny_run), "--image", str(tmp_path / "bad.png")], "bad.png"),
        (["attention", "--model_name_or_path", str(tmp_path / "missing"), "--image", "x.png"], "no such folder"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as excinfo:
            visualize.main(argv + ["--question", "is there any abnormality?", "--output", str(tmp_path / "a.png")])
        err = capsys.readouterr().err
        assert excinfo.value.code == 2 and expected in err and "Traceback" not in err
        last_line = err.strip().splitlines()[-1]  # after the weight-loading bar
        assert last_line.startswith("python -m retina_vqa.visualize attention: error:") and expected in last_line
