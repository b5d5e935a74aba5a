"""The visualisation command line (python -m retina_vqa.visualize) on a real tiny run: every subcommand; the model
subcommands also on saved tiny BLIP-2 and InstructBLIP folders."""

from __future__ import annotations

import json

import pytest

from retina_vqa import visualize
from retina_vqa.data.images import load_image
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.explain import PRESENCE_LESION_TYPES

from . import test_plots
from .helpers import assert_png
from .models.test_blip2 import build

# The trained tiny run the commands read, shared with test_plots (bound by assignment: an imported fixture
# would read as unused to the linter). Its place is conftest.py once another module needs it.
tiny_run = test_plots.tiny_run


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
    assert set(result["by_question_type"]) <= set(PRESENCE_LESION_TYPES)


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


@pytest.fixture(scope="module")
def saved_prompt_models(tmp_path_factory) -> dict:
    """Untrained tiny BLIP-2 (OPT) and InstructBLIP folders as run_vqa.py leaves them: weights, processor, prompt."""
    folders = {}
    for name in ("opt", "instructblip"):
        model, processor, _ = build(name)
        model.config.prompt_template = "Fundus question: {question} Short answer:"
        folder = tmp_path_factory.mktemp(f"tiny-{name}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.mark.parametrize("name", ["opt", "instructblip"])
def test_attention_and_pointing_on_a_saved_blip2(name, saved_prompt_models, tiny_dataset_dir, tmp_path, capsys):
    folder = str(saved_prompt_models[name])
    image = tmp_path / "fundus.png"
    load_image(load_dataset_dir(str(tiny_dataset_dir))["test"][0]["image"]).save(image)
    common = ["--model_name_or_path", folder, "--image", str(image), "--question", "are there haemorrhages?"]
    size = visualize.main(["attention", *common, "--output", str(tmp_path / "att.png")])
    assert size == (1000, 500)  # image | overlay
    assert_png(tmp_path / "att.png", size)
    size = visualize.main(["attention", *common, "--output", str(tmp_path / "q.png"), "--per_token"])
    assert size == (5 * 260, 290 + 80)  # image + one overlay per learned query (4), in one row
    assert_png(tmp_path / "q.png", size)

    # Tiny Q-Formers: only layer 1 of 2 cross-attends to the image.
    with pytest.raises(SystemExit) as excinfo:
        visualize.main(["attention", *common, "--output", str(tmp_path / "x.png"), "--layer", "1"])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert excinfo.value.code == 2 and "--layer 1 is out of range" in last_line

    result = visualize.main(
        ["pointing", "--model_name_or_path", folder, "--dataset_dir", str(tiny_dataset_dir), "--split", "test",
         "--max_examples", "3"]
    )  # fmt: skip
    assert result["overall"]["count"] == 3
    for key in ("model", "random", "centre", "answered_yes"):
        assert 0.0 <= result["overall"][key] <= 1.0
