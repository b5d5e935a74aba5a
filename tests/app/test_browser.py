"""`python -m retina_vqa.app` as a user meets it: a server process on a free local port, driven in a real Chromium
(Playwright with the system browser), and by 8 API clients at once.

The browser tests need Chromium (`apt-get install chromium`) and Playwright (`pip install -e .[app,browser]`,
which `make install` runs); they are skipped, with the reason, where those are missing, except under ``CI=true``
(`.ci/run`), where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from retina_vqa.app.handlers import Answerer
from retina_vqa.app.screenshot import ask, find_chromium, free_port, message_starting, upload
from retina_vqa.inference import answer_questions, load_answer_candidates, load_for_inference
from retina_vqa.questions import QUESTION_TYPES

pytestmark = pytest.mark.e2e  # real processes / servers: left out of `make test-fast`

STARTUP_SECONDS = 120  # importing torch, transformers and gradio on a busy 2-core machine


def _missing(what: str) -> None:
    """A missing browser-test dependency fails under CI (the tests must run there) and skips elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing, and CI=true: the browser tests must run in CI (.ci/run installs it).")
    pytest.skip(f"{what} is missing: install it to run the browser tests.")


@pytest.fixture(scope="module")
def server(app_model_dir, tmp_path_factory):
    """``python -m retina_vqa.app`` on a free port of 127.0.0.1, with a 1 MB upload limit; its base URL."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        _missing("Gradio (`pip install -e .[app]`)")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "GRADIO_TEMP_DIR": str(log.parent / "uploads"),
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "retina_vqa.app", "--model_name_or_path", str(app_model_dir)]
    command += ["--port", str(port), "--max_file_size", "1mb", "--device", "cpu"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with status {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} in {STARTUP_SECONDS} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield {"url": url, "process": process, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright (`pip install -e .[browser]`)")
    chromium = find_chromium()
    if chromium is None:
        _missing("Chromium (`apt-get install chromium`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server["url"])
    page.locator("#upload input[type=file]").wait_for(state="attached")
    yield page
    page.close()


def table_rows(page, element_id: str) -> list[list[str]]:
    """The body cells of the table `element_id`, row by row, as the page shows them."""
    rows = page.locator(f"#{element_id} [role=row]").all()[1:]  # the first is the header
    return [[cell.inner_text().strip() for cell in row.locator("[role=gridcell]").all()] for row in rows]


@pytest.fixture(scope="module")
def expected(app_model_dir):
    """``answers(image, questions)``: what the Python API answers, for comparison with the page."""
    model, processor = load_for_inference(app_model_dir, device="cpu")
    candidates = load_answer_candidates(app_model_dir)

    def answers(image: Path | list[Path], questions: list[str]) -> list[dict]:
        images = [str(path) for path in image] if isinstance(image, list) else str(image)  # one, or one per question
        return answer_questions(
            model, processor, images, questions, answer_mode="auto", answer_candidates=candidates,
            return_scores=True,
        )  # fmt: skip

    answers.candidates = candidates
    return answers


def test_page_answers_as_the_python_api_with_bars_and_overlay(page, fundus_files, expected, tmp_path):
    image = fundus_files["fundus.jpg"]
    # The selected known question (the diagnosis), then a typed one.
    chosen = page.locator("#question-choice input").input_value()
    assert chosen == "what is the diagnosis?"
    answer = ask(page, image)
    (api,) = expected(image, [chosen])
    assert answer == api["answer"]
    # The candidate probabilities, as bars: every diagnosis grade, with the page's answer among them.
    bars = page.locator("#scores").inner_text()
    for candidate in expected.candidates.answers["diagnosis"]:
        assert candidate in bars
    assert f"{round(100 * api['answer_scores'][answer])}%" in bars
    overlay = page.locator("#overlay img")
    assert overlay.get_attribute("src")
    assert page.evaluate("() => document.querySelector('#overlay img').naturalWidth") == 512 * 48 // 64
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot))
    with Image.open(shot) as picture:
        assert picture.size == (1400, 900)

    answer = ask(page, fundus_files["second.png"], "which eye is this?")
    assert answer == expected(fundus_files["second.png"], ["which eye is this?"])[0]["answer"]


def test_screening_report_table_and_json_download(page, fundus_files, expected, server):
    image = fundus_files["second.png"]
    upload(page, "upload", image)
    message_starting(page, "message", "Loaded second.png")
    page.locator("#report").click()
    message_starting(page, "message", "Screening report:")
    table = table_rows(page, "report-table")
    link = page.locator("#report-json a").first
    link.wait_for(state="attached")
    href = link.get_attribute("href")
    with urllib.request.urlopen(href if href.startswith("http") else server["url"] + href.lstrip("/")) as response:
        report = json.loads(response.read())
    asked = [a["question"] for a in report["answers"]]
    api = expected(image, asked)
    assert report["image"] == "second.png"
    assert asked == Answerer(None, None, expected.candidates).known_questions()
    assert len(asked) == len(QUESTION_TYPES)
    assert [a["answer"] for a in report["answers"]] == [a["answer"] for a in api]
    assert [row[1:3] for row in table] == [[a["question"], a["answer"]] for a in api]


def test_batch_table_answers_each_image_and_names_the_unreadable_one(page, fundus_files, expected):
    page.get_by_role("tab", name="Batch").click()
    files = [fundus_files[name] for name in ("fundus.jpg", "second.png", "notes.txt")]
    upload(page, "batch-upload", files)
    page.wait_for_function("() => document.querySelectorAll('#batch-upload tbody tr').length === 3")
    page.locator("#batch-question-text textarea").fill("are there haemorrhages?")
    page.locator("#batch-run").click()
    message = message_starting(page, "batch-message", "Answered")
    assert message.startswith("Answered 2 of 3 images. Skipped: Cannot load image from the upload 'notes.txt'")
    rows = table_rows(page, "batch-table")
    # The readable images in one call, as the page asks them: the same batch, so the same numbers.
    answers = expected(files[:2], ["are there haemorrhages?"] * 2)
    assert [row[:3] for row in rows] == [[image.name, "are there haemorrhages?", a["answer"]] for image, a in
                                         zip(files[:2], answers, strict=True)]  # fmt: skip
    assert [row[3] for row in rows] == [f"{a['answer_scores'][a['answer']]:.1%}" for a in answers]


def test_broken_non_image_and_huge_uploads_show_a_message_and_the_server_stays_up(page, fundus_files, server):
    upload(page, "upload", fundus_files["broken.jpg"])
    message = message_starting(page, "message", "Cannot load image")
    assert message.startswith("Cannot load image from the upload 'broken.jpg': the image data cannot be decoded")
    upload(page, "upload", fundus_files["notes.txt"])
    message = message_starting(page, "message", "Cannot load image from the upload 'notes.txt'")
    assert "not a readable image" in message and "Traceback" not in message
    page.locator("#ask").click()
    message_starting(page, "message", "Cannot load image from the upload 'notes.txt'")
    # Over the 1 MB limit: refused at upload, before any handler runs, with Gradio's message in the page.
    upload(page, "upload", fundus_files["huge.jpg"])
    page.get_by_text("exceed the maximum allowed size").first.wait_for(timeout=30_000)
    # The page still answers.
    assert ask(page, fundus_files["second.png"], "is there any abnormality?")
    assert server["process"].poll() is None


def test_eight_concurrent_requests_are_queued_and_all_answered(server, fundus_files, expected):
    pytest.importorskip("gradio_client", reason="gradio_client comes with Gradio (`pip install -e .[app]`)")
    from gradio_client import Client, handle_file

    questions = [
        "what is the diagnosis?",
        "is there any abnormality?",
        "which eye is this?",
        "are there haemorrhages?",
        "are there microaneurysms?",
        "are there hard exudates?",
        "can this condition cause blindness?",
        "is the image quality adequate for grading?",
    ]
    image = fundus_files["second.png"]
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def one_tab(k: int) -> None:
        try:
            client = Client(server["url"], verbose=False)
            results[k] = client.predict(handle_file(str(image)), questions[0], questions[k], api_name="/ask")
        except BaseException as error:  # reported below, with the others
            errors.append(error)

    threads = [threading.Thread(target=one_tab, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    # Each tab asked one question: so is the Python API here (a batch of eight would pad them to one length).
    api = [expected(image, [question])[0] for question in questions]
    assert [results[k][0] for k in range(8)] == [a["answer"] for a in api]
    assert all(results[k][3].startswith(f"Q: {questions[k]}") for k in range(8))
    assert server["process"].poll() is None
    with urllib.request.urlopen(server["url"], timeout=10) as response:
        assert response.status == 200
