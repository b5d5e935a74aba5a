"""The README's picture of the web app, taken in a real browser (Chromium driven by Playwright).

    python -m retina_vqa.app.screenshot --model_name_or_path outputs/demo --output docs/app.png \\
        [--image fundus.png | --dataset_dir data/retinavqa-synthetic --split test --image_id test-00005] \\
        [--question "..." --answer_list FILE]

Serves the page for the model on a free local port, uploads the photograph (default: the first test image of
the synthetic set with moderate or worse retinopathy, or --image_id), asks the question
(default: the page's default, the diagnosis), waits for the answer and the Grad-CAM overlay, and saves the
window as a PNG. Needs the ``app`` extra and Playwright (``pip install -e .[app,browser]``) and a Chromium
(``apt-get install chromium``): Playwright drives the system browser, it downloads none.

This module also holds the few steps the browser tests and this script share (`find_chromium`, `upload`,
`ask`, `message_starting`).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["ask", "find_chromium", "free_port", "main", "message_starting", "upload"]

logger = logging.getLogger(__name__)

# The window the picture shows: the three columns of the "Ask" tab side by side, answer and bars in view.
WINDOW = {"width": 1400, "height": 900}
# Milliseconds the page may take to answer: model load is done before, but a CPU Grad-CAM takes a moment.
ANSWER_TIMEOUT_MS = 60_000


def find_chromium() -> str | None:
    """The system Chromium: ``$CHROMIUM`` if set, else ``chromium`` / ``chromium-browser`` on the PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def message_starting(page: Any, element_id: str, prefix: str, timeout_ms: int = ANSWER_TIMEOUT_MS) -> str:
    """Wait until the text box `element_id` starts with `prefix`; its text."""
    page.wait_for_function(
        "([id, prefix]) => { const box = document.querySelector(`#${id} textarea`);"
        " return box !== null && box.value.startsWith(prefix); }",
        arg=[element_id, prefix],
        timeout=timeout_ms,
    )
    return page.locator(f"#{element_id} textarea").input_value()


def upload(page: Any, element_id: str, paths: str | os.PathLike | list[str | os.PathLike]) -> None:
    """Put file(s) into the upload component `element_id`, clearing what it held."""
    file_input = page.locator(f"#{element_id} input[type=file]")
    clear = page.locator(f"#{element_id} button[aria-label='Clear']")
    file_input.or_(clear).first.wait_for(state="attached")  # the page may still be rendering
    if not file_input.count():  # a file is shown: the drop area (and its input) come back on "Clear"
        clear.first.click()
    files = [os.fspath(p) for p in paths] if isinstance(paths, list) else os.fspath(paths)
    file_input.set_input_files(files)


def ask(page: Any, image: str | os.PathLike, question: str | None = None) -> str:
    """Upload `image` in the "Ask" tab, ask `question` (typed; None: the selected known question) and wait for
    the answer and its overlay; the answer the page shows."""
    upload(page, "upload", image)
    message_starting(page, "message", f"Loaded {Path(image).name}")
    if question is None:
        question = page.locator("#question-choice input").input_value()
    else:
        page.locator("#question-text textarea").fill(question)
    page.locator("#ask").click()
    message_starting(page, "message", f"Q: {question}")
    page.locator("#overlay img").wait_for(state="visible", timeout=ANSWER_TIMEOUT_MS)
    return page.locator("#answer textarea").input_value()


def _dataset_image(dataset_dir: str, split: str, image_id: str | None, folder: Path) -> Path:
    """The image `image_id` of `split` (None: the first with moderate or worse retinopathy, grade >= 2, so the
    map has lesions to find), saved as PNG in `folder`."""
    from ..data.loading import load_dataset_dir
    from ..questions import DIAGNOSIS_ANSWERS

    rows = load_dataset_dir(dataset_dir)[split]
    for row in rows:
        if image_id is not None:
            chosen = row.get("image_id") == image_id
        else:
            chosen = row.get("question_type") == "diagnosis" and row["answer"] in DIAGNOSIS_ANSWERS[2:]
        if chosen:
            path = folder / f"{row.get('image_id') or 'fundus'}.png"
            image = row["image"]
            (image if hasattr(image, "save") else _decode(image)).save(path)
            return path
    wanted = f"image_id {image_id!r}" if image_id else "diagnosis row of grade moderate or worse"
    raise ValueError(f"No {wanted} in split {split!r} of {dataset_dir}: give --image or another --image_id.")


def _decode(image: Any) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(image["bytes"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retina_vqa.app.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default="outputs/demo")
    parser.add_argument("--output", default="docs/app.png", help="PNG to write (default %(default)s).")
    parser.add_argument("--image", default=None, help="The photograph to upload (default: from --dataset_dir).")
    parser.add_argument("--dataset_dir", default="data/retinavqa-synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--image_id", default=None, help="Image of --dataset_dir (default: the first of grade moderate or worse)."
    )
    parser.add_argument("--question", default=None, help="Typed question (default: the page's selected question).")
    parser.add_argument("--answer_list", default=None, help="As `python -m retina_vqa.app --answer_list`.")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: $CHROMIUM, else PATH).")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Serve, ask, save the picture; returns its path."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    chromium = args.chromium or find_chromium()
    if not chromium or not Path(chromium).exists():
        parser.exit(2, f"{parser.prog}: error: no Chromium found: `apt-get install chromium`, or pass --chromium.\n")
    try:
        from playwright.sync_api import sync_playwright

        from .__main__ import DEFAULT_MAX_FILE_SIZE
        from .handlers import Answerer
        from .layout import build_demo

        answerer = Answerer.load(args.model_name_or_path, answer_list=args.answer_list)
    except ImportError as error:
        parser.exit(2, f"{parser.prog}: error: {error}: install the extras with `pip install -e .[app,browser]`.\n")
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    demo = build_demo(answerer, max_file_size=DEFAULT_MAX_FILE_SIZE)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
            if args.image:
                image = Path(args.image)
            else:
                image = _dataset_image(args.dataset_dir, args.split, args.image_id, Path(folder))
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport=WINDOW)
            page.goto(f"http://127.0.0.1:{port}/")
            answer = ask(page, image, args.question)
            page.wait_for_timeout(500)  # the bars animate in
            page.screenshot(path=str(output))
            browser.close()
    finally:
        demo.close()
    print(f"wrote {output} (answer in the page: {answer!r})")
    return output


if __name__ == "__main__":
    main()
