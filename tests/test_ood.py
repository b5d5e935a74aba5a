"""retina_vqa.ood: the out-of-distribution guard (Mahalanobis distance on pooled image features), saved with the
model and used by answer_questions, predict and the app.

The fitted-guard tests use the tests' random tiny BLIP (`make_tiny_model`), not a trained one: its image encoder is a
fixed function of the pixels (patch embedding + attention), so synthetic fundus photographs land in one region of
feature space and a blank frame or a chart elsewhere. What is tested is the guard itself -- density, threshold,
saving, the warning -- on features that really come from the model; how well a trained encoder separates real
fundus photographs from other pictures is what bench/ood_guard.py measures.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.inference import answer_questions, load_for_inference
from retina_vqa.ood import GUARD_CONFIG, GUARD_WEIGHTS, OODGuard, features_of, find_ood_guard, ledoit_wolf, main
from retina_vqa.predict import main as predict_main

from .helpers import ROOT, TINY_CONFIG, make_tiny_model

WARNING = "Warning: this does not look like the fundus photographs the model was trained on (score "


def gaussian(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) * torch.linspace(0.5, 3.0, d).double() + 4.0


# ----------------------------------------------------------------------------------------------------
# The density
# ----------------------------------------------------------------------------------------------------


def test_distance_is_zero_at_the_mean_and_grows_away_from_it():
    guard = OODGuard.fit(gaussian(200), gaussian(50, seed=1))
    direction = torch.randn(8, dtype=torch.float64)
    points = torch.stack([guard.mean + step * direction for step in (0.0, 0.5, 1.0, 2.0, 4.0)])
    scores = guard.score(points)
    assert scores[0].item() == pytest.approx(0.0, abs=1e-9)
    assert torch.all(scores[1:] > scores[:-1])
    # Linear in the step along a line through the mean: a distance, not a squared one.
    assert scores[4].item() == pytest.approx(2 * scores[3].item(), rel=1e-9)


def test_threshold_is_the_validation_percentile():
    validation = gaussian(37, seed=1)
    for percentile in (99.0, 90.0, 50.0):
        guard = OODGuard.fit(gaussian(200), validation, percentile)
        expected = np.percentile(guard.score(validation).numpy(), percentile)
        assert guard.threshold == pytest.approx(expected, rel=1e-12)
        assert guard.percentile == percentile
        assert (guard.num_train, guard.num_validation) == (200, 37)
    flagged = [check["flagged"] for check in guard.check(validation)]
    assert sum(flagged) == int(np.sum(guard.score(validation).numpy() > guard.threshold)) > 0


def test_ledoit_wolf_makes_a_singular_covariance_invertible():
    few = gaussian(5, d=16)  # fewer samples than dimensions: the sample covariance is singular
    covariance, shrinkage = ledoit_wolf(few)
    assert 0 < shrinkage <= 1
    assert torch.linalg.matrix_rank(covariance) == 16
    many_covariance, many_shrinkage = ledoit_wolf(gaussian(5000))
    assert many_shrinkage < 0.05  # plenty of data: little shrinkage, close to the sample covariance
    assert torch.allclose(many_covariance, torch.cov(gaussian(5000).T, correction=0), rtol=0.1, atol=0.05)


def test_fit_refuses_too_few_images_and_bad_percentiles():
    with pytest.raises(ValueError, match="at least 2 training images"):
        OODGuard.fit(gaussian(1), gaussian(5))
    with pytest.raises(ValueError, match="percentile"):
        OODGuard.fit(gaussian(20), gaussian(5), percentile=0)
    with pytest.raises(ValueError, match="same features"):
        OODGuard.fit(torch.ones(5, 8, dtype=torch.float64), gaussian(5))


# ----------------------------------------------------------------------------------------------------
# Saved with the model
# ----------------------------------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path):
    guard = OODGuard.fit(gaussian(100), gaussian(20, seed=1), 95.0)
    guard.save(tmp_path)
    config = json.loads((tmp_path / GUARD_CONFIG).read_text())
    assert config["version"] == 1 and config["feature_size"] == 8 and config["percentile"] == 95.0
    loaded = OODGuard.load(tmp_path, feature_size=8)
    assert torch.equal(loaded.mean, guard.mean) and torch.equal(loaded.precision, guard.precision)
    assert (loaded.threshold, loaded.percentile, loaded.num_train, loaded.num_validation, loaded.shrinkage) == (
        guard.threshold,
        guard.percentile,
        guard.num_train,
        guard.num_validation,
        guard.shrinkage,
    )
    points = gaussian(10, seed=3)
    assert torch.equal(loaded.score(points), guard.score(points))


def test_load_names_a_malformed_or_mismatched_guard(tmp_path):
    guard = OODGuard.fit(gaussian(100), gaussian(20, seed=1))
    guard.save(tmp_path)
    with pytest.raises(ValueError, match="8 features but the model's image encoder has 128"):
        OODGuard.load(tmp_path, feature_size=128)
    with pytest.raises(ValueError, match="fitted for another model"):
        guard.score(torch.zeros(2, 128, dtype=torch.float64))
    save_file({"mean": guard.mean, "precision": guard.precision[:4]}, tmp_path / GUARD_WEIGHTS)
    with pytest.raises(ValueError, match="do not match feature_size 8"):
        OODGuard.load(tmp_path)
    (tmp_path / GUARD_CONFIG).write_text("{not json")
    with pytest.raises(ValueError, match="malformed out-of-distribution guard"):
        OODGuard.load(tmp_path)
    (tmp_path / GUARD_WEIGHTS).unlink()
    with pytest.raises(ValueError, match="ood_guard.safetensors missing: the guard needs both"):
        OODGuard.load(tmp_path)


# ----------------------------------------------------------------------------------------------------
# Fitted on the tiny model's features of synthetic fundus photographs
# ----------------------------------------------------------------------------------------------------


def rendered_plot(size: int = 64) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(2, 2), dpi=size // 2)
    axes.plot([0, 1, 2, 3], [1, 3, 2, 4], marker="o")
    axes.set_title("loss")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


def distinct_images(dataset) -> list[Image.Image]:
    first: dict[str, Image.Image] = {}
    for image_id, image in zip(dataset["image_id"], dataset["image"], strict=True):
        first.setdefault(image_id, image)
    return list(first.values())


@pytest.fixture(scope="module")
def fundus_dataset(tmp_path_factory) -> Path:
    """24/8/8 synthetic fundus photographs at 64 px (enough validation images for a meaningful percentile)."""
    from retina_vqa.synthetic import generate_dataset

    path = tmp_path_factory.mktemp("data") / "retinavqa"
    generate_dataset(24, 8, 8, image_size=64, seed=0, num_workers=1).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fundus_dataset) -> Path:
    """The random tiny BLIP saved like run_vqa.py saves one, with a guard fitted by the command line."""
    from transformers import AutoProcessor

    path = tmp_path_factory.mktemp("model") / "out"
    make_tiny_model(init_range=0.5, seed=0).save_pretrained(path)
    AutoProcessor.from_pretrained(TINY_CONFIG).save_pretrained(path)
    main(["fit", "--model_name_or_path", str(path), "--dataset_dir", str(fundus_dataset), "--device", "cpu"])
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_for_inference(model_dir, device="cpu")


@pytest.fixture(scope="module")
def guard(loaded):
    return find_ood_guard(loaded[0])


def test_cli_fits_on_train_and_thresholds_on_validation(guard, loaded, fundus_dataset):

    raw = load_dataset_dir(str(fundus_dataset))
    assert (guard.num_train, guard.num_validation, guard.feature_size) == (24, 8, 128)
    model, processor = loaded
    validation = features_of(model, processor, distinct_images(raw["validation"]))
    assert guard.threshold == pytest.approx(np.percentile(guard.score(validation).numpy(), 99), rel=1e-6)


def test_blank_frame_and_plot_are_flagged_held_out_fundus_mostly_not(guard, loaded, fundus_dataset):

    model, processor = loaded
    test_images = distinct_images(load_dataset_dir(str(fundus_dataset))["test"])
    held_out = guard.check(features_of(model, processor, test_images))
    assert sum(check["flagged"] for check in held_out) <= 1  # at most 1 of 8 held-out fundus photographs
    others = [Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 255, 255)), rendered_plot()]
    assert all(check["flagged"] for check in guard.check(features_of(model, processor, others)))


# ----------------------------------------------------------------------------------------------------
# answer_questions, predict, the app
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, fundus_dataset) -> dict[str, Path]:

    folder = tmp_path_factory.mktemp("images")
    fundus = distinct_images(load_dataset_dir(str(fundus_dataset))["train"])[0]
    paths = {"fundus": folder / "fundus.png", "blank": folder / "blank.png", "plot": folder / "plot.png"}
    fundus.save(paths["fundus"])
    Image.new("RGB", (64, 64)).save(paths["blank"])
    rendered_plot().save(paths["plot"])
    return paths


def test_answer_questions_adds_the_check_to_each_scored_answer(loaded, guard, image_files):
    images = [str(image_files["fundus"]), str(image_files["plot"]), str(image_files["plot"])]
    questions = ["what is the diagnosis?", "what is the diagnosis?", "is there any abnormality?"]
    answers = answer_questions(*loaded, images, questions, return_scores=True)
    checks = [answer["out_of_distribution"] for answer in answers]
    assert [check["flagged"] for check in checks] == [False, True, True]
    assert checks[1] == checks[2] and checks[0]["threshold"] == guard.threshold
    assert checks[1]["score"] > guard.threshold > checks[0]["score"] > 0
    # Switched off, or plain answers: as without a guard.
    plain = answer_questions(*loaded, images, questions, return_scores=True, ood_guard=False)
    assert all("out_of_distribution" not in answer for answer in plain)
    assert [a["answer"] for a in plain] == [a["answer"] for a in answers]
    assert answer_questions(*loaded, images, questions) == [a["answer"] for a in answers]


def test_predict_warns_before_the_answers_of_a_flagged_image_only(model_dir, image_files, capsys):
    args = ["--model_name_or_path", str(model_dir), "--device", "cpu", "--question", "what is the diagnosis?"]
    predict_main(args + ["--image", str(image_files["blank"])])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(WARNING) and " > threshold " in lines[0]
    assert lines[1] == "Question: what is the diagnosis?" and lines[2].startswith("Answer: ")
    predict_main(args + ["--image", str(image_files["fundus"])])
    out = capsys.readouterr().out
    assert "Warning" not in out and out.startswith("Question: what is the diagnosis?\nAnswer: ")


def test_app_message_starts_with_the_warning_for_a_flagged_upload(model_dir, image_files):
    from retina_vqa.app.handlers import Answerer

    answerer = Answerer.load(model_dir, device="cpu")
    try:
        _, _, _, message = answerer.on_ask(str(image_files["plot"]), "what is the diagnosis?", None)
        assert message.startswith(WARNING)
        _, _, message = answerer.on_report(str(image_files["blank"]))
        assert message.startswith(WARNING) and "Screening report" in message
        _, _, _, message = answerer.on_ask(str(image_files["fundus"]), "what is the diagnosis?", None)
        assert message.startswith("Q: what is the diagnosis?")
    finally:
        answerer.close()


def test_without_a_saved_guard_nothing_changes(tmp_path, loaded):
    model, processor = loaded
    assert find_ood_guard(model, tmp_path) is None


def test_predict_dataset_records_carry_the_check(model_dir, fundus_dataset, tmp_path, capsys):
    output = tmp_path / "predictions.jsonl"
    args = ["--model_name_or_path", str(model_dir), "--dataset_dir", str(fundus_dataset), "--split", "test"]
    predict_main(args + ["--device", "cpu", "--max_samples", "26", "--output_file", str(output)])
    out = capsys.readouterr().out
    assert "Out-of-distribution guard: " in out and " of 2 images flagged" in out
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 26 and all(
        set(r["out_of_distribution"]) == {"score", "threshold", "flagged"} for r in records
    )


def test_predict_names_a_guard_fitted_for_another_model(model_dir, image_files, tmp_path, capsys):
    import shutil

    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    OODGuard.fit(gaussian(20), gaussian(5, seed=1)).save(other)  # 8 features; the model has 128
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--model_name_or_path", str(other), "--device", "cpu", "--image", str(image_files["fundus"]),
                      "--question", "what is the diagnosis?"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "8 features but the model's image encoder has 128" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["blip2-opt-tiny", "instructblip-tiny"])
def test_blip2_features_are_the_vision_models_pooled_patches(folder):
    from transformers import (
        AutoConfig,
        AutoProcessor,
        Blip2ForConditionalGeneration,
        InstructBlipForConditionalGeneration,
    )

    from retina_vqa.models.blip2 import init_query_tokens
    from retina_vqa.ood import image_features, model_feature_size

    path = ROOT / "configs" / folder
    config = AutoConfig.from_pretrained(path)
    torch.manual_seed(0)
    model_class = (
        InstructBlipForConditionalGeneration if config.model_type == "instructblip" else Blip2ForConditionalGeneration
    )
    model = model_class(config).eval()
    init_query_tokens(model)
    pixels = AutoProcessor.from_pretrained(path).image_processor(images=[rendered_plot(128)], return_tensors="pt")
    features = image_features(model, pixels["pixel_values"])
    states = model.vision_model(pixel_values=pixels["pixel_values"]).last_hidden_state
    assert features.shape == (1, model_feature_size(model))
    assert torch.allclose(features, states[:, 1:].double().mean(dim=1))
