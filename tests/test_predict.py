"""retina_vqa.predict: the CLI, the Python API, the image kinds people have, and plain-transformers parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from retina_vqa.data.loading import load_dataset_dir
from retina_vqa.inference import answer_questions, load_for_inference
from retina_vqa.metrics import normalize_answer
from retina_vqa.models.generation_config import (
    answer_generation_defaults,
    apply_saved_answer_generation,
    configure_answer_generation,
)
from retina_vqa.predict import main
from retina_vqa.questions import DIAGNOSIS_ANSWERS

from .helpers import TINY_CONFIG, make_tiny_model
from .same_answers import CLEAR, StepRecorder, agreeing_steps, answers_alone, assert_same_where_clear, recording

MAX_LENGTH = 30  # > transformers' 20-token default, so a cut answer shows
QUESTIONS = ["what is the diagnosis?", "is there any abnormality?"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random tiny BLIP (answers vary and run to the maximum length) saved like run_vqa.py saves one."""
    from transformers import AutoProcessor

    path = tmp_path_factory.mktemp("model") / "out"
    model = make_tiny_model(init_range=0.5, seed=0)
    configure_answer_generation(model, MAX_LENGTH, num_beams=1)
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(TINY_CONFIG).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_for_inference(model_dir, device="cpu")


def fundus(width: int = 96, height: int = 64) -> Image.Image:
    """A small asymmetric RGB picture (so a rotation changes the pixels)."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    image = Image.fromarray(array)
    ImageDraw.Draw(image).ellipse((5, 5, width // 3, height // 2), fill=(250, 220, 40))
    return image


def run_cli(argv: list[str], capsys) -> str:
    main(argv)
    return capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# Images and questions
# ----------------------------------------------------------------------------------------------------


def test_cli_prints_question_and_answer_lines(model_dir, loaded, tmp_path, capsys):
    image_path = tmp_path / "fundus.png"
    fundus().save(image_path)
    args = ["--model_name_or_path", str(model_dir), "--image", str(image_path), "--device", "cpu"]
    out = run_cli(args + ["--question", QUESTIONS[0], "--question", QUESTIONS[1]], capsys)

    answers = answer_questions(*loaded, str(image_path), QUESTIONS)
    expected = "".join(f"Question: {q}\nAnswer: {a}\n" for q, a in zip(QUESTIONS, answers, strict=True))
    assert out == expected
    assert all(answers)


def test_cli_several_images_get_every_question_under_a_header(model_dir, loaded, tmp_path, capsys):
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    fundus().save(paths[0])
    fundus().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(paths[1])
    out = run_cli(
        ["--model_name_or_path", str(model_dir), "--image", *map(str, paths), "--question", *QUESTIONS],
        capsys,
    )
    # The CLI answers every (image, question) pair in one call, as the Python API is asked here: the same batch.
    answers = iter(answer_questions(*loaded, [str(p) for p in paths for _ in QUESTIONS], QUESTIONS * len(paths)))
    expected = ""
    for path in paths:
        expected += f"Image: {path}\n"
        expected += "".join(f"Question: {q}\nAnswer: {next(answers)}\n" for q in QUESTIONS)
    assert out == expected


def write_image_kinds(folder: Path) -> dict[str, Path]:
    base = fundus()
    kinds = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        kinds[name] = folder / name
        image.save(kinds[name], **kwargs)

    save("rgb.jpg", base, quality=95)
    save("rgb.png", base)
    save("rgb.tif", base)
    save("gray.png", base.convert("L"))
    save("gray_alpha.png", base.convert("LA"))
    save("palette.png", base.convert("P"))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    save("rgba.png", rgba)
    save("cmyk.jpg", base.convert("CMYK"))
    sixteen = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("sixteen_bit.png", Image.fromarray(sixteen))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    save("exif_rotated.jpg", base, quality=95, exif=exif)
    large = Image.new("RGB", (5000, 4000), (40, 10, 5))
    ImageDraw.Draw(large).ellipse((500, 200, 4500, 3800), fill=(200, 80, 30))
    save("large.jpg", large, quality=80)
    return kinds


def test_every_image_kind_is_answered(model_dir, loaded, tmp_path, capsys):
    kinds = write_image_kinds(tmp_path)
    assert Image.open(kinds["sixteen_bit.png"]).mode.startswith("I;16")
    assert Image.open(kinds["cmyk.jpg"]).mode == "CMYK"
    assert Image.open(kinds["palette.png"]).mode == "P"
    out = run_cli(
        ["--model_name_or_path", str(model_dir), "--max_image_side", "1024", "--question", QUESTIONS[0]]
        + ["--image", *map(str, kinds.values())],
        capsys,
    )
    lines = out.splitlines()
    assert lines[0::3] == [f"Image: {path}" for path in kinds.values()]
    assert lines[1::3] == [f"Question: {QUESTIONS[0]}"] * len(kinds)
    assert all(line.startswith("Answer: ") and len(line) > len("Answer: ") for line in lines[2::3])

    # EXIF orientation is applied: same answer as the stored pixels physically rotated (lossless PNG).
    with Image.open(kinds["exif_rotated.jpg"]) as stored:
        rotated = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert rotated.size == (64, 96)
    rotated.save(tmp_path / "rotated.png")
    answers = answer_questions(*loaded, [kinds["exif_rotated.jpg"], tmp_path / "rotated.png"], QUESTIONS[:1] * 2)
    assert answers[0] == answers[1]


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty"])
def test_unreadable_image_is_a_one_line_error_naming_the_file(model_dir, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(SystemExit) as excinfo:
        main(["--model_name_or_path", str(model_dir), "--image", str(path), "--question", QUESTIONS[0]])
    assert excinfo.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert str(path) in captured.err and "Traceback" not in captured.err


def test_bad_arguments_exit_with_a_message(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--model_name_or_path", str(model_dir), "--question", QUESTIONS[0]])
    assert excinfo.value.code == 2 and "--image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as excinfo:
        main(["--model_name_or_path", str(model_dir), "--dataset_dir", str(tmp_path / "no-data")])
    assert excinfo.value.code == 2 and "does not exist" in capsys.readouterr().err
    fundus().save(tmp_path / "fundus.png")
    with pytest.raises(SystemExit) as excinfo:
        main(
            ["--model_name_or_path", str(tmp_path / "no-model"), "--image", str(tmp_path / "fundus.png")]
            + ["--question", QUESTIONS[0]]
        )
    err = capsys.readouterr().err
    assert excinfo.value.code == 2 and "no such folder" in err and "no-model" in err
    with pytest.raises(SystemExit) as excinfo:  # a hub id is tried (and fails offline), not taken for a path
        main(
            ["--model_name_or_path", "no-org/no-model", "--image", str(tmp_path / "fundus.png")]
            + ["--question", QUESTIONS[0]]
        )
    err = capsys.readouterr().err
    assert excinfo.value.code == 2 and "cannot load a model from 'no-org/no-model'" in err


# ----------------------------------------------------------------------------------------------------
# A dataset
# ----------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dataset_predictions_equal_one_by_one_answers(model_dir, loaded, tiny_dataset_dir, tmp_path, capsys):
    output = tmp_path / "preds.jsonl"
    out = run_cli(
        ["--model_name_or_path", str(model_dir), "--dataset_dir", str(tiny_dataset_dir), "--split", "test"]
        + ["--max_samples", "12", "--batch_size", "5", "--output_file", str(output)],
        capsys,
    )
    test = load_dataset_dir(str(tiny_dataset_dir))["test"].select(range(12))
    records = read_jsonl(output)
    assert [r["id"] for r in records] == list(range(12))
    assert [r["question"] for r in records] == test["question"]
    assert [r["reference"] for r in records] == test["answer"]
    for record in records:
        assert record["correct"] == (normalize_answer(record["prediction"]) == normalize_answer(record["reference"]))
    assert {"image_id", "question_type"} <= set(records[0])

    # Batched and padded vs alone: the same answer where every choice is clear of float rounding (tests.same_answers).
    one_by_one, margins = answers_alone(*loaded, test["image"], test["question"])
    assert_same_where_clear([r["prediction"] for r in records], one_by_one, margins, at_least=9)  # 11 of 12 here
    correct = sum(r["correct"] for r in records)
    summary, *grading = out.splitlines()
    assert summary == (
        f"Answered 12 questions of 'test': exact match {correct / 12:.4f} ({correct}/12); "
        f"predictions written to {output}"
    )
    # The first 12 rows are one image's questions, one of them the diagnosis: its grading metrics follow.
    diagnosis = [r for r in records if r["question_type"] == "diagnosis"]
    off_scale = sum(normalize_answer(r["prediction"]) not in DIAGNOSIS_ANSWERS for r in diagnosis)
    assert len(diagnosis) == 1
    assert grading[0].startswith("Diagnosis (1 question): quadratic weighted kappa ")
    assert "referable DR (moderate or worse): sensitivity" in grading[1]
    assert grading[-1] == f"  answers that are not a grade: {off_scale}"


def test_json_lines_file_with_relative_paths_and_default_output(model_dir, loaded, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    fundus().save(data / "images" / "a.png")
    fundus().convert("L").save(data / "images" / "b.tif")
    rows = [("images/a.png", QUESTIONS[0]), ("images/b.tif", QUESTIONS[0]), ("images/b.tif", QUESTIONS[1])]
    answers = answer_questions(*loaded, [data / p for p, _ in rows], [q for _, q in rows])
    references = [answers[0].upper(), "healthy retina", answers[2]]  # exact match is normalised
    with open(data / "questions.jsonl", "w") as f:
        for (image, question), reference in zip(rows, references, strict=True):
            f.write(json.dumps({"image": image, "question": question, "answer": reference}) + "\n")

    out = run_cli(["--model_name_or_path", str(model_dir), "--data_file", str(data / "questions.jsonl")], capsys)
    output = model_dir / "predictions-questions.jsonl"
    records = read_jsonl(output)
    assert [r["prediction"] for r in records] == answers
    assert [r["correct"] for r in records] == [True, answers[1] == "healthy retina", True]
    assert "exact match" in out and str(output) in out


def test_dataset_bad_image_names_the_row_and_file(model_dir, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    fundus().save(tmp_path / "good.png")
    with open(tmp_path / "q.jsonl", "w") as f:
        for name in ("good.png", "bad.png"):
            f.write(json.dumps({"image": name, "question": QUESTIONS[0]}) + "\n")
    with pytest.raises(SystemExit) as excinfo:
        main(["--model_name_or_path", str(model_dir), "--data_file", str(tmp_path / "q.jsonl")])
    err = capsys.readouterr().err
    assert excinfo.value.code == 2
    assert "row 1" in err and "bad.png" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------
# Generation settings and plain transformers
# ----------------------------------------------------------------------------------------------------


def test_saved_generation_config_carries_the_answer_settings(model_dir):
    saved = json.loads((model_dir / "generation_config.json").read_text())
    assert saved["bos_token_id"] == 5 and saved["decoder_start_token_id"] == 5  # [DEC]
    assert saved["eos_token_id"] == 3 and saved["pad_token_id"] == 0  # [SEP], [PAD]
    assert saved["max_length"] == MAX_LENGTH and saved["num_beams"] == 1


def test_loaded_model_uses_the_saved_settings(loaded):
    model, _ = loaded
    assert answer_generation_defaults(model) == {"max_new_tokens": MAX_LENGTH - 1, "num_beams": 1}
    decoder = model.text_decoder.generation_config
    assert (decoder.max_length, decoder.eos_token_id, decoder.pad_token_id) == (MAX_LENGTH, 3, 0)


def test_model_without_saved_settings_answers_up_to_48_tokens(tmp_path):
    from transformers import AutoModelForVisualQuestionAnswering

    model = make_tiny_model()
    model.save_pretrained(tmp_path)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path)
    assert answer_generation_defaults(model) == {"max_new_tokens": 48, "num_beams": 1}
    apply_saved_answer_generation(model)
    assert model.text_decoder.generation_config.max_length == 49


def test_plain_transformers_gives_the_same_long_answer(model_dir, loaded, tmp_path):
    from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

    path = tmp_path / "fundus.png"
    fundus().save(path)
    with recording(loaded[0]) as calls:
        (ours,) = answer_questions(*loaded, path, QUESTIONS[0])
    tokenizer = loaded[1].tokenizer
    assert len(tokenizer(ours, add_special_tokens=False)["input_ids"]) > 20  # runs to the saved maximum

    # Nothing from retina_vqa below: what the model card shows.
    model = AutoModelForVisualQuestionAnswering.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    inputs = processor(images=Image.open(path).convert("RGB"), text=QUESTIONS[0], return_tensors="pt")
    plain = StepRecorder()
    with torch.no_grad():
        ids = model.generate(**inputs, max_length=model.generation_config.max_length, **plain.kwargs)
        via_config = model.generate(**inputs, generation_config=model.generation_config)
        bare = model.generate(**inputs)
    assert ids.shape[-1] == MAX_LENGTH  # not cut at transformers' default of 20 new tokens
    # Eager attention and transformers' generate vs ours: every step's logits within float rounding of ours, so the
    # same tokens unless two were near-tied; where none were, the same text.
    (answered,) = calls
    assert agreeing_steps(answered.steps(answers=answered.output[:, 1:]), plain.steps(answers=ids[:, 1:])) > 20
    plain_answer = processor.decode(ids[0], skip_special_tokens=True).strip()
    assert plain_answer == ours or answered.smallest_margin() <= CLEAR
    assert torch.equal(via_config, ids)
    # transformers 5 builds BLIP's decoder generation config from the text config, not from
    # generation_config.json, so a bare generate() stops at 20 new tokens: a prefix of the answer.
    assert plain_answer.startswith(processor.decode(bare[0], skip_special_tokens=True).strip())


def test_configure_answer_generation_validates(loaded):
    with pytest.raises(ValueError, match="max_answer_length"):
        configure_answer_generation(loaded[0], 1)
    with pytest.raises(ValueError, match="num_beams"):
        configure_answer_generation(loaded[0], 10, num_beams=0)


def test_each_image_is_encoded_once_and_answers_keep_row_order(loaded, tmp_path):
    model, processor = loaded
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"eye{i}.png")
        fundus(96 + 16 * i, 64).save(paths[-1])
    # Questions about the three images, interleaved, one image given as a path and as the same path again.
    images = [paths[i % 3] for i in range(9)] + [str(paths[0])]
    questions = [QUESTIONS[i % 2] for i in range(9)] + ["which eye is this?"]
    encoded = []
    handle = model.vision_model.register_forward_hook(lambda m, args, out: encoded.append(out[0].shape[0]))
    try:
        answers = answer_questions(model, processor, images, questions, batch_size=4)
        one_chunk_per_image = answer_questions(model, processor, images, questions, batch_size=2, images_per_chunk=1)
    finally:
        handle.remove()
    assert encoded[:1] == [3] and sum(encoded) == 3 + 3  # three distinct images, once per call
    # Other batches, other padding: the same answers where every choice is clear of float rounding.
    one_by_one, margins = answers_alone(model, processor, images, questions)
    assert_same_where_clear(answers, one_by_one, margins, at_least=7)
    assert_same_where_clear(one_chunk_per_image, one_by_one, margins, at_least=7)
    assert len(set(answers)) > 1  # not a constant answer


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_cli_attention_choice_reaches_the_model(model_dir, tmp_path, capsys, monkeypatch, implementation):
    from retina_vqa import predict
    from retina_vqa.models.attention import attention_implementation

    used = []
    original = predict.load_for_inference

    def spy(*args, **kwargs):
        model, processor = original(*args, **kwargs)
        used.append(attention_implementation(model))
        return model, processor

    monkeypatch.setattr(predict, "load_for_inference", spy)
    fundus().save(tmp_path / "eye.png")
    out = run_cli(
        ["--model_name_or_path", str(model_dir), "--image", str(tmp_path / "eye.png"), "--question", QUESTIONS[0]]
        + ["--attn_implementation", implementation],
        capsys,
    )
    model, processor = load_for_inference(model_dir, device="cpu", attn_implementation=implementation)
    expected = answer_questions(model, processor, tmp_path / "eye.png", QUESTIONS[0])[0]
    assert used == [implementation]
    assert out == f"Question: {QUESTIONS[0]}\nAnswer: {expected}\n"


def test_questions_are_truncated_as_in_training(model_dir, tmp_path):
    """run_vqa.py saves --max_question_length as the tokenizer's model_max_length; answering truncates there too,
    so a question longer than training's limit gets the answer of its training-length prefix."""
    import shutil

    from transformers import AutoProcessor

    folder = tmp_path / "short-questions"
    shutil.copytree(model_dir, folder)
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.model_max_length = 8  # what run_vqa.py --max_question_length 8 saves
    processor.save_pretrained(folder)
    model, processor = load_for_inference(folder, device="cpu")
    question = "what might be the cause of this condition in the left eye of this patient?"
    ids = processor.tokenizer(question, truncation=True)["input_ids"]
    assert len(ids) == 8  # truncated by the saved limit alone
    prefix = processor.tokenizer.decode(ids[1:-1])
    image = fundus()
    long, short, full = answer_questions(model, processor, image, [question, prefix, question + " " + question])
    assert long == short == full
    reference, _ = load_for_inference(model_dir, device="cpu")
    untruncated = answer_questions(reference, AutoProcessor.from_pretrained(model_dir), image, [question, prefix])
    assert untruncated[0] != untruncated[1]  # without the limit the two are different questions


# ----------------------------------------------------------------------------------------------------
# Ranked answers
# ----------------------------------------------------------------------------------------------------


def test_cli_ranks_over_an_answer_list_and_prints_the_probabilities(
    model_dir, loaded, tiny_dataset_dir, tmp_path, capsys
):
    image_path = tmp_path / "fundus.png"
    fundus().save(image_path)
    base = ["--model_name_or_path", str(model_dir), "--device", "cpu"]
    # The random model folder has no answer_candidates.json: ranking needs a list, and says where to get one.
    with pytest.raises(SystemExit) as excinfo:
        main(base + ["--image", str(image_path), "--question", QUESTIONS[0], "--answer_mode", "auto"])
    error = capsys.readouterr().err
    assert excinfo.value.code == 2 and "answer_candidates.json" in error and "--answer_list" in error
    flat = tmp_path / "answers.json"
    flat.write_text(json.dumps(["yes", "no", "moderate dr"]))
    with pytest.raises(SystemExit):
        main(base + ["--image", str(image_path), "--question", QUESTIONS[0], "--answer_list", str(flat)])
    assert "--answer_mode" in capsys.readouterr().err

    # One list for every question: each answer is one of it, with every candidate's probability.
    out = run_cli(
        base
        + ["--image", str(image_path), "--question", *QUESTIONS, "--answer_mode", "rank", "--answer_list", str(flat)],
        capsys,
    )
    lines = out.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["Question", "Answer", "Probabilities"] * 2
    expected = answer_questions(
        *loaded, str(image_path), QUESTIONS, answer_mode="rank", answer_candidates=flat, return_scores=True
    )
    for k, result in enumerate(expected):
        assert result["answer"] in ("yes", "no", "moderate dr") and lines[3 * k + 1] == f"Answer: {result['answer']}"
        shown = ", ".join(f"{a} {p:.3f}" for a, p in result["answer_scores"].items())
        assert lines[3 * k + 2] == f"Probabilities: {shown}"

    # A dataset with a list per type: the diagnosis rows ranked (answer_scores in the JSON lines), the rest generated.
    per_type = tmp_path / "types.json"
    per_type.write_text(json.dumps({"diagnosis": list(DIAGNOSIS_ANSWERS)}))
    output = tmp_path / "ranked.jsonl"
    dataset = ["--dataset_dir", str(tiny_dataset_dir), "--split", "test", "--max_samples", "26"]
    ranking = ["--answer_mode", "auto", "--answer_list", str(per_type), "--output_file", str(output)]
    out = run_cli(base + dataset + ranking, capsys)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    for record in records:
        if record["question_type"] == "diagnosis":
            assert record["prediction"] in DIAGNOSIS_ANSWERS
            assert sum(record["answer_scores"].values()) == pytest.approx(1.0)
        else:
            assert "answer_scores" not in record
    ranked = [r for r in records if "answer_scores" in r]
    accuracy = sum(r["correct"] for r in ranked) / len(ranked)
    assert len(ranked) == 2 and out.splitlines()[-1].startswith(f"Ranked 2 questions: accuracy {accuracy:.4f}, ECE ")


def test_cli_answer_list_keeps_the_temperature_of_the_models_list_in_another_order(model_dir, loaded, tmp_path, capsys):
    import shutil

    from retina_vqa.answering.candidates import AnswerCandidates

    folder = tmp_path / "calibrated"
    shutil.copytree(model_dir, folder)
    questions = {QUESTIONS[0]: "diagnosis"}
    AnswerCandidates(
        answers={"diagnosis": DIAGNOSIS_ANSWERS}, questions=questions, temperatures={"diagnosis": 4.0}
    ).save(folder)
    image_path = tmp_path / "fundus.png"
    fundus().save(image_path)
    # The model's diagnosis answers, listed in another order: the same list, so the same temperature.
    reordered = [answer.upper() for answer in reversed(DIAGNOSIS_ANSWERS)]
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps({"diagnosis": reordered}))
    args = ["--model_name_or_path", str(folder), "--device", "cpu", "--image", str(image_path)]
    args += ["--question", QUESTIONS[0], "--answer_mode", "rank", "--answer_list", str(lists)]
    printed = run_cli(args, capsys).splitlines()[2]

    def shown(temperatures: dict[str, float]) -> str:
        candidates = AnswerCandidates(
            answers={"diagnosis": tuple(reordered)}, questions=questions, temperatures=temperatures
        )
        (result,) = answer_questions(
            *loaded, str(image_path), [QUESTIONS[0]], answer_mode="rank", answer_candidates=candidates,
            return_scores=True,
        )  # fmt: skip
        return "Probabilities: " + ", ".join(f"{a} {p:.3f}" for a, p in result["answer_scores"].items())

    assert shown({}) != shown({"diagnosis": 4.0})  # the temperature shows in the printed probabilities
    assert printed == shown({"diagnosis": 4.0})
