"""Tests for the command line (python -m retina_vqa.synthetic, retina_vqa.synthetic.__main__)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.questions import QUESTION_TYPES
from retina_vqa.synthetic.__main__ import main
from retina_vqa.synthetic.export import preview_label_height


def test_cli_errors_name_the_flag(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep me")
    cases = [
        (["--output_dir", str(tmp_path / "full"), "--num_train_images", "1"], "--overwrite"),
        (["--output_dir", str(tmp_path / "a"), "--format", "parquet"], "--format"),
        (["--output_dir", str(tmp_path / "a"), "--grade_weights", "1,x,1,1,1"], "--grade_weights"),
        (["--output_dir", str(tmp_path / "a"), "--image_size", "16"], "--image_size"),
        (["--output_dir", str(tmp_path / "a"), "--num_test_images", "-2"], "--num_test_images"),
    ]
    for argv, flag in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert flag in capsys.readouterr().err
    assert (tmp_path / "full" / "x.txt").read_text() == "keep me"


def test_cli_writes_dataset_and_overwrites(tmp_path):
    out = tmp_path / "synth"
    argv = ["--output_dir", str(out), "--num_train_images", "3", "--num_validation_images", "1"]
    argv += ["--num_test_images", "1", "--image_size", "64", "--num_workers", "1"]
    main(argv)
    assert load_dataset_dir(str(out))["train"].num_rows == 3 * len(QUESTION_TYPES)
    main([*argv, "--overwrite", "--question_types", "diagnosis,laterality"])
    dd = load_dataset_dir(str(out))
    assert dd["train"].num_rows == 6
    assert "--question_types diagnosis,laterality" in (out / "README.md").read_text()


def test_preview_png(tmp_path):
    out = tmp_path / "preview.png"
    main(["--preview", str(out), "--image_size", "64", "--seed", "2"])
    with Image.open(out) as im:
        label = preview_label_height(64)
        assert im.size == (4 * 64, 4 * (64 + label))
        assert im.format == "PNG"


def test_python_dash_m_runs_without_warnings():
    # -W error: runpy warns (here: fails) if the package imported its own __main__ before running it.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "retina_vqa.synthetic", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--output_dir" in result.stdout and "--preview" in result.stdout


def test_cli_quality_defects_are_checked_and_reach_the_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--output_dir", str(tmp_path / "a"), "--quality_defects", "blurred,lens_flare"])
    error = capsys.readouterr().err
    assert exc.value.code == 2 and "--quality_defects" in error and "small_pupil" in error
    assert not (tmp_path / "a").exists()
    out = tmp_path / "defects"
    argv = ["--output_dir", str(out), "--num_train_images", "4", "--num_validation_images", "0"]
    argv += ["--num_test_images", "0", "--image_size", "64", "--num_workers", "1", "--quality_defect_rate", "1"]
    main([*argv, "--quality_defects", "small_pupil"])
    train = load_dataset_dir(str(out))["train"]
    assert set(train["quality"]) == {"small_pupil"}
