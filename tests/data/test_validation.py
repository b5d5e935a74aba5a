import io
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.data.validation import drop_invalid, validate_splits

from ..helpers import ROOT, common_args

sys.path.insert(0, str(ROOT))
import run_vqa  # noqa: E402


def png(value: int = 100, size=(40, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def split(rows: list[dict]) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    data = {k: [r[k] for r in rows] for k in ("image", "question", "answer")}
    data["image"] = [{"bytes": b, "path": None} if b is not None else None for b in data["image"]]
    return datasets.Dataset.from_dict(data, features=features)


def bad_rows() -> list[dict]:
    good = png()
    return [
        {"image": good, "question": "is there any abnormality?", "answer": "yes"},  # 0 fine
        {"image": good, "question": "   ", "answer": "yes"},  # 1 empty question
        {"image": good, "question": "which eye?", "answer": ""},  # 2 empty answer
        {"image": b"definitely not an image", "question": "q?", "answer": "a"},  # 3 undecodable
        {"image": png()[: len(png()) // 2], "question": "q?", "answer": "a"},  # 4 truncated
        {"image": png(size=(8, 8)), "question": "q?", "answer": "a"},  # 5 smaller than a patch
        {"image": None, "question": "q?", "answer": "a"},  # 6 missing
        {"image": png(mode="L"), "question": "q?", "answer": "a"},  # 7 grayscale: converted, fine
        {"image": png(mode="P"), "question": "q?", "answer": "a"},  # 8 palette: converted, fine
    ]


def test_every_problem_is_reported_with_split_row_and_column():
    report = validate_splits(
        {"train": split(bad_rows())}, image_column="image", question_column="question", answer_column="answer"
    )
    found = {(p.row, p.column, p.reason) for p in report.problems}
    assert found == {
        (1, "question", "empty question"),
        (2, "answer", "empty answer"),
        (3, "image", "unreadable image"),
        (4, "image", "unreadable image"),
        (5, "image", "image smaller than one patch"),
        (6, "image", "missing image"),
    }
    assert report.bad_rows("train") == {1, 2, 3, 4, 5, 6}
    assert any("converted non-RGB" in w and "L: 1" in w and "P: 1" in w for w in report.warnings)
    text = report.format()
    assert "6 problem(s)" in text and "train row 3, column 'image': unreadable image" in text
    assert report.counts() == {
        "invalid_examples/train/empty answer": 1,
        "invalid_examples/train/empty question": 1,
        "invalid_examples/train/image smaller than one patch": 1,
        "invalid_examples/train/missing image": 1,
        "invalid_examples/train/unreadable image": 2,
    }
    assert len(drop_invalid(split(bad_rows()), report.bad_rows("train"))) == 3


def test_leakage_and_long_answers_are_warned(tiny_processor):
    shared = png(7)
    train = split([{"image": shared, "question": "q?", "answer": "one two three four five six seven"}])
    test = split(
        [
            {"image": shared, "question": "q?", "answer": "a"},
            {"image": png(9), "question": "q", "answer": "b"},
        ]
    )
    report = validate_splits(
        {"train": train, "test": test},
        image_column="image",
        question_column="question",
        answer_column="answer",
        tokenizer=tiny_processor.tokenizer,
        max_answer_length=5,
    )
    assert not report.problems
    assert any("1 image(s) of the 'test' split are also in 'train'" in w for w in report.warnings)
    assert any("1 answer(s) longer than --max_answer_length 5" in w for w in report.warnings)


@pytest.fixture
def broken_dataset_dir(tmp_path):
    rows = bad_rows()
    good = [r for i, r in enumerate(rows) if i in (0, 7, 8)] * 4
    path = tmp_path / "broken"
    datasets.DatasetDict({"train": split(rows + good), "validation": split(good), "test": split(good)}).save_to_disk(
        str(path)
    )
    return path


def run_args(data_dir, output_dir) -> list[str]:
    overrides = [
        "--do_train",
        "--do_eval",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--generation_max_length",
        "4",
    ]
    return common_args(data_dir, output_dir) + overrides


def test_run_stops_before_training_with_the_full_report(broken_dataset_dir, tmp_path):
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError) as error:
        run_vqa.main(run_args(broken_dataset_dir, output_dir))
    message = str(error.value)
    assert "6 problem(s)" in message and "--skip_invalid_examples" in message
    assert "train row 4, column 'image'" in message
    assert not output_dir.exists() or not any(output_dir.glob("checkpoint-*"))


def test_skip_invalid_examples_trains_and_counts_what_it_dropped(broken_dataset_dir, tmp_path):
    output_dir = tmp_path / "out"
    results = run_vqa.main(run_args(broken_dataset_dir, output_dir) + ["--skip_invalid_examples"])
    assert results["train_samples"] == 15  # 21 rows less the 6 bad ones
    saved = json.loads((output_dir / "all_results.json").read_text())
    assert saved["invalid_examples/train/unreadable image"] == 2
    assert saved["invalid_examples/train/missing image"] == 1
    assert "eval_exact_match" in saved


VALIDATE_ON_TWO_RANKS = """
import json, os, sys
import torch.distributed as dist
from retina_vqa.data import validation
from retina_vqa.data.loading import load_dataset_dir

dist.init_process_group("gloo")
decoded = []
inspect = validation._inspect
validation._inspect = lambda *args, **kwargs: decoded.append(args[1]) or inspect(*args, **kwargs)
train = load_dataset_dir(sys.argv[1])["train"]
report = validation.validate_on_all_processes(
    {"train": train}, image_column="image", question_column="question", answer_column="answer"
)
with open(os.path.join(sys.argv[2], f"rank{dist.get_rank()}.json"), "w") as f:
    json.dump({"decoded": decoded, "counts": report.counts(), "bad": sorted(report.bad_rows("train"))}, f)
dist.destroy_process_group()
"""


def _validate_on_two_ranks(dataset_dir, out_dir, port):
    script = out_dir / "validate.py"
    script.write_text(VALIDATE_ON_TWO_RANKS)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [*command, str(script), str(dataset_dir), str(out_dir)], env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.e2e
def test_processes_share_the_decoding_and_every_rank_gets_the_whole_report(broken_dataset_dir, tmp_path):
    main, other = _validate_on_two_ranks(broken_dataset_dir, tmp_path, 29541)
    # Each distinct image decoded by exactly one process, both busy; both get every problem.
    assert main["decoded"] and other["decoded"] and not set(main["decoded"]) & set(other["decoded"])
    assert main["counts"] == other["counts"] and main["bad"] == other["bad"] == [1, 2, 3, 4, 5, 6]
    # The second run reads the kept report: nothing decoded, same report on both ranks.
    again = tmp_path / "again"
    again.mkdir()
    main2, other2 = _validate_on_two_ranks(broken_dataset_dir, again, 29542)
    assert main2["decoded"] == other2["decoded"] == []
    assert main2["counts"] == main["counts"] and other2["bad"] == main["bad"]


def test_a_dataset_validated_before_is_not_decoded_again(broken_dataset_dir, monkeypatch):
    from retina_vqa.data import validation

    decoded = []
    inspect = validation._inspect
    monkeypatch.setattr(validation, "_inspect", lambda *a, **k: decoded.append(a[1]) or inspect(*a, **k))
    train = load_dataset_dir(str(broken_dataset_dir))["train"]
    columns = {"image_column": "image", "question_column": "question", "answer_column": "answer"}
    first = validation.validate_on_all_processes({"train": train}, **columns)
    assert decoded and validation.cache_path({"train": train}, **columns).is_file()
    decoded.clear()
    reloaded = load_dataset_dir(str(broken_dataset_dir))["train"]
    second = validation.validate_on_all_processes({"train": reloaded}, **columns)
    assert decoded == [] and second.counts() == first.counts() and second.bad_rows("train") == first.bad_rows("train")
    # Other rows or other settings: validated again.
    validation.validate_on_all_processes({"train": train.select(range(8))}, **columns)
    assert decoded
    decoded.clear()
    validation.validate_on_all_processes({"train": train}, **columns, decode_side=256)
    assert decoded


def test_images_are_decoded_no_larger_than_needed(monkeypatch):
    from retina_vqa.data import validation

    sides = []
    load = validation.load_image
    monkeypatch.setattr(validation, "load_image", lambda *a, **k: sides.append(k.get("max_side")) or load(*a, **k))
    big = io.BytesIO()
    Image.fromarray(np.full((1200, 1600, 3), 90, np.uint8)).save(big, format="JPEG")
    cut = big.getvalue()[: len(big.getvalue()) // 2]
    report = validate_splits(
        {
            "train": split(
                [
                    {"image": big.getvalue(), "question": "q?", "answer": "a"},
                    {"image": cut, "question": "q?", "answer": "a"},
                ]
            )
        },
        image_column="image",
        question_column="question",
        answer_column="answer",
    )
    assert sides == [validation.DECODE_SIDE] * 2
    # A reduced-scale decode still reads every byte: the truncated photograph is caught.
    assert [(p.row, p.reason) for p in report.problems] == [(1, "unreadable image")]


def test_eval_and_predict_on_one_split_validate_the_rows_of_both(tmp_path):
    """--do_eval and --do_predict on the same split with different --max_*_samples: the longer selection is
    validated, so a bad row only evaluation reads is still reported before any model is built."""
    good = {"image": png(), "question": "is there any abnormality?", "answer": "yes"}
    rows = [good] * 30
    rows[20] = {"image": b"not an image", "question": "q?", "answer": "a"}
    path = tmp_path / "data"
    datasets.DatasetDict({"train": split([good] * 4), "test": split(rows)}).save_to_disk(str(path))
    args = common_args(path, tmp_path / "out") + ["--do_eval", "--do_predict", "--validation_split", "test"]
    with pytest.raises(ValueError, match=r"1 problem\(s\) in the data:\n  - test row 20, column 'image'"):
        run_vqa.main(args + ["--max_eval_samples", "25", "--max_predict_samples", "5"])
    with pytest.raises(ValueError, match=r"test row 20"):
        run_vqa.main(args + ["--max_eval_samples", "5", "--max_predict_samples", "25"])
