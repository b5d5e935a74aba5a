"""python -m retina_vqa.baselines: the question-prior baseline on a saved dataset, scored like run_vqa.py scores it."""

from __future__ import annotations

import json

import pytest

from retina_vqa import baselines
from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.metrics import score_prior
from retina_vqa.synthetic import QUESTION_TYPES, generate_dataset, save_dataset


def test_cli_on_generated_dataset(tmp_path, capsys):
    dd = generate_dataset(10, 0, 5, image_size=64, seed=0, num_workers=1)
    save_dataset(dd, tmp_path / "ds")
    out_json = tmp_path / "scores.json"
    baselines.main(["--dataset_dir", str(tmp_path / "ds"), "--split", "test", "--output_json", str(out_json)])
    printed = capsys.readouterr().out
    assert "overall" in printed and "diagnosis" in printed
    scores = json.loads(out_json.read_text())
    assert {key.split("/", 1)[1] for key in scores if key.startswith("exact_match/")} == set(QUESTION_TYPES)
    assert scores["exact_match/modality"] == 1.0
    assert 0.0 < scores["exact_match"] < 1.0
    # The same numbers run_vqa.py reports for the prior (one scorer, one normalisation).
    saved = load_dataset_dir(str(tmp_path / "ds"))
    assert scores == pytest.approx(score_prior(saved["train"], saved["test"]))
    for question_type in QUESTION_TYPES:
        assert question_type in printed


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        baselines.main(["--dataset_dir", str(tmp_path / "missing")])
    assert "--dataset_dir" in capsys.readouterr().err
    dd = generate_dataset(2, 0, 0, image_size=64, num_workers=1)
    save_dataset(dd, tmp_path / "ds")
    with pytest.raises(SystemExit):
        baselines.main(["--dataset_dir", str(tmp_path / "ds"), "--split", "dev"])
    assert "--split" in capsys.readouterr().err
