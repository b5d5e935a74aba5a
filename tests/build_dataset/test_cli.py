"""The command line: its manual, exit codes, and the report printed for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from retina_vqa.build_dataset.__main__ import build_parser, main
from retina_vqa.data.loading import load_dataset_dir

from .helpers import make_aptos, make_ddr


def test_help_is_the_manual():
    text = build_parser().format_help()
    for source in ("aptos", "eyepacs", "idrid", "messidor2", "ddr", "csv"):
        assert source in text
    for flag in ("--skip_invalid", "--keep_ungradable", "--max_image_side", "--num_proc", "--patient_column"):
        assert flag in text
    assert "IDRiD_Disease Grading_Training Labels.csv" in text  # the epilog shows each source's files
    result = subprocess.run(
        [sys.executable, "-m", "retina_vqa.build_dataset", "--help"], capture_output=True, text=True, check=True
    )
    assert "DR_grading/train.txt" in result.stdout


def test_builds_and_prints_a_summary(tmp_path, capsys):
    fixture = make_ddr(tmp_path / "in")
    output = tmp_path / "out"
    argv = ["--source", "ddr", "--labels", *map(str, fixture.labels), "--images", *map(str, fixture.images)]
    main([*argv, "--output_dir", str(output), "--max_image_side", "64", "--disable_tqdm"])
    printed = capsys.readouterr().out
    assert "train: 11 images" in printed and "left out: ungradable 3" in printed
    assert load_dataset_dir(str(output))["validation"].num_rows > 0
    assert (
        f"python -m retina_vqa.build_dataset --source ddr --labels {fixture.labels[0]}"
        in (output / "README.md").read_text()
    )


def test_bad_input_exits_1_with_the_report_and_bad_flags_exit_2(tmp_path, capsys):
    fixture = make_aptos(tmp_path / "in", n=4)
    (fixture.images[0] / "extra.png").write_bytes((fixture.images[0] / "0000c1434d8d.png").read_bytes())
    base = ["--labels", str(fixture.labels[0]), "--images", str(fixture.images[0]), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "aptos", *base, "--disable_tqdm"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "unlabelled_image (1)" in err and "extra.png" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "eyepacs", *base])
    assert exit_info.value.code == 1
    assert "expects ['image', 'level']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "aptos", *base, "--validation_fraction", "0.5", "--test_fraction", "0.5"])
    assert exit_info.value.code == 2
    assert "leave no training images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", "aptos", *base, "--grade_column", "diagnosis"])
    assert exit_info.value.code == 2
    assert "--grade_column only apply to --source csv" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
