"""The lock file (requirements-lock.txt, written by tools/lock.py): it pins what the ranges ask for, within them."""

from __future__ import annotations

import importlib.util
import re
from datetime import date
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from retina_vqa.models import compat

from .helpers import ROOT

LOCK = ROOT / "requirements-lock.txt"


def _lock_tool():
    spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock_tool = _lock_tool()


def _requirements() -> list[tuple[str, Requirement]]:
    """(where, requirement) of every requirements file line and every optional dependency in pyproject.toml."""
    found = []
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                found.append((name, Requirement(line)))
    # pyproject.toml's extras, as the installed project declares them (``gradio>=5; extra == "app"``).
    found += [("pyproject.toml", Requirement(r)) for r in metadata.requires("retina-vqa") or []]
    return found


def test_every_requirement_is_locked_within_its_range():
    pins = lock_tool.read_lock(LOCK)
    problems = []
    for where, requirement in _requirements():
        version = pins.get(lock_tool.canonical(requirement.name))
        if version is None:
            problems.append(f"{where}: {requirement.name} is not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{where}: {requirement} but the lock has {version}")
    assert not problems, "; ".join(problems) + ". Run `make test-latest` and `make lock`."


def test_the_locked_transformers_is_one_the_recipe_was_tested_with():
    locked = Version(lock_tool.read_lock(LOCK)["transformers"])
    low, high = (Version(v) for v in compat.TESTED_TRANSFORMERS)
    assert low <= locked < high, f"lock has transformers {locked}; compat.TESTED_TRANSFORMERS is [{low}, {high})"


def test_the_lock_pins_releases_not_builds():
    pins = lock_tool.read_lock(LOCK)
    assert "torch" in pins and "+" not in pins["torch"]  # the same lock takes the CPU wheel or PyPI's CUDA build
    assert {"pip", "setuptools", "tokenizers", "huggingface-hub", "safetensors"} <= set(pins)
    assert "retina-vqa" not in pins  # the project installs editable from the working tree


def test_written_lock_reads_back_and_differences_name_each_package():
    versions = {"torch": "2.13.0", "transformers": "5.25.0", "peft": "0.21.2"}
    text = lock_tool.format_lock(versions, day=date(2026, 12, 5))
    assert text.startswith("# ") and "make lock" in text and "2026-12-05" in text
    pins = re.findall(r"^\S+==\S+$", text, flags=re.MULTILINE)
    assert pins == ["peft==0.21.2", "torch==2.13.0", "transformers==5.25.0"]
    installed = {"torch": "2.13.0", "transformers": "5.26.0", "numpy": "2.4.6"}
    assert lock_tool.differences(versions, installed) == [
        "numpy: 2.4.6 installed, not in the lock",
        "peft: locked 0.21.2, not installed",
        "transformers: locked 5.25.0, installed 5.26.0",
    ]
    assert lock_tool.differences(versions, dict(versions)) == []
    # torch's GPU build brings its CUDA runtime, which the lock (written on the CPU build) does not name.
    assert lock_tool.differences(versions, {**versions, "nvidia-cublas": "13.1.1.3", "triton": "3.8.0"}) == []
    assert lock_tool.public_version("2.13.0+cpu") == "2.13.0"
    assert lock_tool.canonical("Huggingface_Hub") == "huggingface-hub"


def test_a_hand_edited_range_in_the_lock_is_refused(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\ntorch==2.13.0\ntransformers>=5.24\n")
    with pytest.raises(ValueError, match=r"lock.txt:3: 'transformers>=5.24' is not a `name==version` pin"):
        lock_tool.read_lock(lock)


def test_check_fails_on_an_environment_that_is_not_the_lock(tmp_path, capsys):
    lock = tmp_path / "lock.txt"
    lock.write_text(lock_tool.format_lock({**lock_tool.installed(), "transformers": "0.0.1"}))
    assert lock_tool.main(["check", str(lock)]) == 1
    out = capsys.readouterr()
    assert "transformers: locked 0.0.1, installed" in out.out and "make install" in out.err
    lock.write_text(lock_tool.format_lock(lock_tool.installed()))
    assert lock_tool.main(["check", str(lock)]) == 0
