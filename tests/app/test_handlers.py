"""retina_vqa.app.handlers without a browser: the answers the page shows are the Python API's, problems are
messages, the report and the batch table hold what the model says."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from retina_vqa.app import handlers
from retina_vqa.app.handlers import MAX_QUESTION_CHARS, Answerer, catalogue_question_type
from retina_vqa.inference import answer_questions, load_answer_candidates
from retina_vqa.questions import QUESTION_TYPES


@pytest.fixture(scope="module")
def answerer(app_model_dir) -> Answerer:
    return Answerer.load(app_model_dir, device="cpu")


def api_answers(answerer: Answerer, images, questions: list[str]) -> list[dict]:
    """What `retina_vqa.inference.answer_questions` says, as a user of the Python API calls it (one image for all
    questions, or one per question)."""
    return answer_questions(
        answerer.model,
        answerer.processor,
        [str(image) for image in images] if isinstance(images, list) else str(images),
        questions,
        answer_mode="auto",
        answer_candidates=load_answer_candidates(answerer.name),
        return_scores=True,
    )


def test_the_trained_model_has_answer_candidates_so_the_page_ranks(answerer, app_model_dir):
    assert (app_model_dir / "answer_candidates.json").exists()
    assert answerer.answer_mode == "auto"
    assert set(answerer.candidates.answers["diagnosis"]) == {
        "healthy retina",
        "mild dr",
        "moderate dr",
        "severe dr",
        "proliferative dr",
    }


def test_known_questions_are_one_per_trained_type_in_catalogue_order(answerer):
    questions = answerer.known_questions()
    assert questions == [spec["question"] for spec in QUESTION_TYPES.values()]
    assert [answerer.question_type(q) for q in questions] == list(QUESTION_TYPES)
    # Without saved candidates the catalogue still gives the list.
    bare = Answerer(answerer.model, answerer.processor, None, name="bare")
    assert bare.known_questions() == questions and bare.answer_mode == "generate"


def test_upload_applies_the_exif_orientation(answerer, fundus_files):
    preview, message = answerer.on_upload(str(fundus_files["fundus.jpg"]))
    # Stored 64 wide x 48 high with orientation 6: the model and the page see it 48 wide x 64 high.
    assert message == "Loaded fundus.jpg (48x64 px)."
    assert preview.height > preview.width


@pytest.mark.parametrize(
    ("question", "ranked"),
    [
        ("what is the diagnosis?", True),  # closed, five grades
        ("are there haemorrhages?", True),  # closed, yes/no
        ("can this condition cause blindness?", False),  # open: free text
        ("what is the cause?", False),  # a wording the model never saw: generated
    ],
)
def test_ask_answers_as_the_python_api_with_an_overlay(answerer, fundus_files, question, ranked):
    image = fundus_files["fundus.jpg"]
    answer, scores, overlay, message = answerer.on_ask(str(image), "what is the diagnosis?", question)
    (expected,) = api_answers(answerer, image, [question])
    assert answer == expected["answer"]
    assert scores == expected["answer_scores"]
    assert message.startswith(f"Q: {question}")
    assert overlay is not None and max(overlay.size) == 512
    assert (scores is not None) == ranked
    if ranked:  # a distribution over the candidates, the answer the most likely
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert max(scores, key=scores.get) == answer
        assert "Ranked over" in message
    else:
        assert "Generated" in message


def test_the_typed_question_wins_over_the_chosen_one(answerer, fundus_files):
    image = str(fundus_files["second.png"])
    typed = answerer.on_ask(image, "what is the diagnosis?", "which eye is this?")
    assert typed[3].startswith("Q: which eye is this?")
    chosen = answerer.on_ask(image, "what is the diagnosis?", "   ")
    assert chosen[3].startswith("Q: what is the diagnosis?")


def test_report_asks_every_known_question_and_writes_json(answerer, fundus_files):
    image = fundus_files["second.png"]
    rows, path, message = answerer.on_report(str(image))
    questions = answerer.known_questions()
    expected = api_answers(answerer, image, questions)
    assert [row[1] for row in rows] == questions
    assert [row[2] for row in rows] == [e["answer"] for e in expected]
    assert message == f"Screening report: {len(questions)} questions about second.png."
    report = json.loads(open(path).read())
    assert report["image"] == "second.png" and report["model"] == str(answerer.name)
    assert [a["answer"] for a in report["answers"]] == [e["answer"] for e in expected]
    assert [a["answer_scores"] for a in report["answers"]] == [e["answer_scores"] for e in expected]
    assert [a["question_type"] for a in report["answers"]] == list(QUESTION_TYPES)


def test_batch_answers_readable_images_and_names_the_others(answerer, fundus_files):
    paths = [str(fundus_files[name]) for name in ("fundus.jpg", "notes.txt", "second.png")]
    rows, message = answerer.on_batch(paths, "what is the diagnosis?", "")
    # The readable images in one call, as the page asks them: the same batch, so the same numbers.
    expected = api_answers(
        answerer, [fundus_files[n] for n in ("fundus.jpg", "second.png")], ["what is the diagnosis?"] * 2
    )
    assert [row[0] for row in rows] == ["fundus.jpg", "second.png"]
    assert [row[2] for row in rows] == [e["answer"] for e in expected]
    # Each image's own probability (both may give the same answer): an answer shown beside another image differs.
    assert [row[3] for row in rows] == [f"{e['answer_scores'][e['answer']]:.1%}" for e in expected]
    assert message.startswith("Answered 2 of 3 images. Skipped: Cannot load image from the upload 'notes.txt'")
    assert "BytesIO" not in message


@pytest.mark.parametrize(
    ("upload", "choice", "typed", "says"),
    [
        (None, "what is the diagnosis?", "", "Upload a fundus photograph first."),
        ("fundus.jpg", "", "  ", "Pick a question from the list or type one."),
        ("fundus.jpg", "", "x" * (MAX_QUESTION_CHARS + 1), f"ask in at most {MAX_QUESTION_CHARS}"),
        ("broken.jpg", "what is the diagnosis?", "", "Cannot load image from the upload 'broken.jpg'"),
        ("notes.txt", "what is the diagnosis?", "", "Cannot load image from the upload 'notes.txt'"),
    ],
)
def test_bad_input_is_a_message_not_an_exception(answerer, fundus_files, upload, choice, typed, says):
    path = str(fundus_files[upload]) if upload else None
    answer, scores, overlay, message = answerer.on_ask(path, choice, typed)
    assert (answer, scores, overlay) == ("", None, None)
    assert says in message
    if upload != "fundus.jpg":  # the report asks the known questions: only the upload can be wrong
        rows, report, message = answerer.on_report(path)
        assert (rows, report) == ([], None)
        assert says in message


def test_catalogue_question_type_reads_paraphrases():
    assert catalogue_question_type("How would you grade this retina? ") == "diagnosis"
    assert catalogue_question_type("what colour is the sky?") is None


def test_an_upload_gone_from_disk_is_a_message(answerer, tmp_path):
    answer, _, _, message = answerer.on_ask(str(tmp_path / "gone.jpg"), "what is the diagnosis?", "")
    assert answer == ""
    assert message.startswith("Cannot load image from the upload 'gone.jpg': the file cannot be read")


def test_an_answer_list_replaces_the_saved_candidates(app_model_dir, fundus_files, tmp_path):
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps({"diagnosis": ["mild dr", "severe dr"]}))
    answerer = Answerer.load(app_model_dir, device="cpu", answer_list=str(lists))
    answer, scores, _, message = answerer.on_ask(str(fundus_files["second.png"]), "what is the diagnosis?", "")
    assert answer in ("mild dr", "severe dr") and set(scores) == {"mild dr", "severe dr"}
    assert "Ranked over 2 known answers" in message
    # Questions of types without a list are generated, and the page still offers every question the model knows.
    assert answerer.on_ask(str(fundus_files["second.png"]), "", "which eye is this?")[1] is None
    assert answerer.known_questions() == [spec["question"] for spec in QUESTION_TYPES.values()]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` RGB pixels but holds the data of a few rows only: it opens (header),
    and decoding it fails."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes(3 * (1 + 3 * width)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (10_000, 6_000, "is 10000x6000 px (60,000,000 pixels)"),  # under Pillow's own limits: it would decode it
        (20_000, 10_000, "has 200,000,000 pixels"),  # over twice Pillow's limit: Pillow refuses to open it
    ],
)
def test_a_photograph_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch, width, height, size):
    def decode(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    path = tmp_path / "scan.png"
    path.write_bytes(png_header(width, height))
    answerer = Answerer(None, None, name="bare")
    preview, message = answerer.on_upload(str(path))
    assert preview is None
    assert message.startswith(f"Cannot load image from the upload 'scan.png': the image {size}, over the limit of ")
    assert "over the limit of 50,000,000 pixels (50 megapixels)." in message and handlers.MAX_IMAGE_PIXELS == 50_000_000
    assert "Resize it to at most 50 megapixels" in message and "--max_image_pixels" in message
    assert "decoded" not in message
    # Every button refuses it the same way; the batch lists it with the files it skipped.
    assert answerer.on_ask(str(path), "what is the diagnosis?", "")[3] == message
    assert answerer.on_report(str(path))[2] == message
    assert answerer.on_batch([str(path)], "what is the diagnosis?", "") == (
        [],
        f"Answered 0 of 1 images. Skipped: {message}",
    )


def test_the_pixel_limit_is_the_answerers(tmp_path):
    path = tmp_path / "fundus.jpg"
    Image.new("RGB", (64, 48), (90, 30, 10)).save(path)
    assert Answerer(None, None, max_image_pixels=64 * 48).on_upload(str(path))[1] == "Loaded fundus.jpg (64x48 px)."
    message = Answerer(None, None, max_image_pixels=64 * 48 - 1).on_upload(str(path))[1]
    assert "the image is 64x48 px (3,072 pixels), over the limit of 3,071 pixels" in message
    with pytest.raises(ValueError, match="max_image_pixels must be a positive number"):
        Answerer(None, None, max_image_pixels=0)


def test_old_screening_reports_are_deleted(monkeypatch):
    monkeypatch.setattr(handlers, "REPORTS_KEPT", 3)
    answerer = Answerer(None, None, name="bare")
    answers = [handlers.Answer("what is the diagnosis?", "mild dr")]
    paths = [answerer.write_report(f"eye-{k}.jpg", answers) for k in range(5)]
    # The newest three stay, each in its own folder; the two oldest are gone, folder and all.
    assert [path.exists() for path in paths] == [False, False, True, True, True]
    assert sorted(answerer.report_dir.iterdir()) == sorted(path.parent for path in paths[2:])
    assert json.loads(paths[-1].read_text())["image"] == "eye-4.jpg"
    answerer.close()
    assert not answerer.report_dir.exists()


def test_the_report_folder_goes_with_the_answerer():
    import gc

    answerer = Answerer(None, None, name="bare")
    folder = answerer.write_report("eye.jpg", []).parent.parent
    assert folder == answerer.report_dir and folder.is_dir()
    del answerer
    gc.collect()
    assert not folder.exists()


def test_the_page_refers_at_the_operating_points_saved_with_the_model(app_model_dir, fundus_files, tmp_path):
    """A model saved with operating_points.json: the report says refer / do not refer at each point, from the
    diagnosis answer's P(referable), and the JSON report keeps the decision."""
    import shutil

    from retina_vqa.metrics.screening import OperatingPoint, save_operating_points

    model_dir = tmp_path / "model"
    shutil.copytree(app_model_dir, model_dir)
    points = [
        OperatingPoint("high_sensitivity", 0.9, 0.0, 1.0, 0.0),
        OperatingPoint("high_specificity", 0.9, 1.01, 0.0, 1.0),
    ]
    save_operating_points(points, model_dir)
    answerer = Answerer.load(model_dir, device="cpu")
    assert [p.name for p in answerer.operating_points] == ["high_sensitivity", "high_specificity"]
    rows, path, message = answerer.on_report(str(fundus_files["second.png"]))
    # A threshold of 0 refers every eye, one above 1 none: the calls follow the thresholds, not the image.
    assert "high sensitivity point: refer; high specificity point: do not refer." in message
    (diagnosis,) = [a for a in json.loads(open(path).read())["answers"] if a["question_type"] == "diagnosis"]
    assert diagnosis["referral"]["high_sensitivity"] == "refer" and 0 <= diagnosis["referral"]["p_referable"] <= 1
    # Without saved points the page says nothing about referral.
    assert "Referral" not in Answerer.load(app_model_dir, device="cpu").on_report(str(fundus_files["second.png"]))[2]


# ----------------------------------------------------------------------------------------------------
# Ungradable images and the batch tab's out-of-distribution warnings
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_blip():
    """A random tiny BLIP and its processor: the answers these tests need are forced by one-answer lists."""
    from transformers import AutoProcessor

    from retina_vqa.models.generation_config import configure_answer_generation

    from ..helpers import TINY_CONFIG, make_tiny_model

    model = make_tiny_model(init_range=0.5, seed=0).eval()
    configure_answer_generation(model, 8, num_beams=1)
    return model, AutoProcessor.from_pretrained(TINY_CONFIG)


def test_the_report_says_ungradable_instead_of_a_referral_when_the_model_says_so(random_blip, tmp_path):
    from retina_vqa.answering.candidates import AnswerCandidates
    from retina_vqa.metrics.gradability import UNGRADABLE_OUTCOME
    from retina_vqa.metrics.screening import OperatingPoint
    from retina_vqa.questions import DIAGNOSIS_ANSWERS

    quality, diagnosis = QUESTION_TYPES["quality"]["question"], QUESTION_TYPES["diagnosis"]["question"]
    Image.new("RGB", (48, 48), (180, 60, 30)).save(tmp_path / "eye.png")
    points = [OperatingPoint("high_sensitivity", 0.9, 0.0, 1.0, 0.0)]  # refers every gradable eye
    messages = {}
    for answer in ("no", "yes"):
        candidates = AnswerCandidates(
            answers={"quality": (answer,), "diagnosis": DIAGNOSIS_ANSWERS},
            questions={quality: "quality", diagnosis: "diagnosis"},
        )
        answerer = Answerer(*random_blip, candidates, name="forced", operating_points=points)
        rows, path, messages[answer] = answerer.on_report(str(tmp_path / "eye.png"))
        assert [row[0] for row in rows] == ["diagnosis", "quality"]
        saved = {a["question_type"]: a for a in json.loads(open(path).read())["answers"]}
        assert saved["quality"]["answer"] == answer
        assert saved["diagnosis"]["answer"] in DIAGNOSIS_ANSWERS  # the grade answer stays in the table and file
        if answer == "no":
            assert saved["diagnosis"]["screening"] == UNGRADABLE_OUTCOME and saved["diagnosis"]["referral"] is None
        else:
            assert saved["diagnosis"]["screening"] is None and saved["diagnosis"]["referral"]["high_sensitivity"]
        answerer.close()
    assert messages["no"].endswith(f" Screening: {UNGRADABLE_OUTCOME}.") and "Referral" not in messages["no"]
    assert "high sensitivity point: refer." in messages["yes"] and UNGRADABLE_OUTCOME not in messages["yes"]


def test_the_batch_tab_warns_about_each_flagged_image(tmp_path):
    from retina_vqa.ood import ood_warning

    for name in ("odd.png", "fine.png"):
        Image.new("RGB", (32, 32), (120, 40, 20)).save(tmp_path / name)
    flagged = {"score": 41.2, "threshold": 17.9, "flagged": True}
    checks = [flagged, {"score": 3.1, "threshold": 17.9, "flagged": False}]
    answerer = Answerer(None, None, name="stub")
    answerer.answer = lambda images, questions: [  # the guard's checks, as answer_questions attaches them
        handlers.Answer(q, "yes", out_of_distribution=check) for q, check in zip(questions, checks, strict=True)
    ]
    rows, message = answerer.on_batch([str(tmp_path / "odd.png"), str(tmp_path / "fine.png")], None, "any lesion?")
    assert len(rows) == 2
    assert message == f"Answered 2 of 2 images. odd.png: {ood_warning(flagged)}"
    answerer.close()
