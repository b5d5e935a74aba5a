"""``python -m retina_vqa.app``: serve the web app for a saved model.

    python -m retina_vqa.app --model_name_or_path outputs/demo [--host 127.0.0.1 --port 7860 --share \\
        --max_file_size 20mb --max_image_pixels 50000000 --answer_list FILE --device cpu]

Every flag has an environment variable for hosting without a command line (a Hugging Face Space runs
``main([])``): ``RETINA_VQA_MODEL`` (default ``outputs/demo``), ``RETINA_VQA_DEVICE``, ``RETINA_VQA_MAX_FILE_SIZE``,
``RETINA_VQA_MAX_IMAGE_PIXELS``, ``RETINA_VQA_ANSWER_LIST``, and Gradio's own ``GRADIO_SERVER_NAME`` (default
``127.0.0.1``: this machine only) and ``GRADIO_SERVER_PORT`` (default 7860). A public link (``--share``) is made only
when asked. Usage reports to Gradio are off.

This module owns the command line and the launch settings; the page is `retina_vqa.app.layout`, the model calls
`retina_vqa.app.handlers`. `main` and `demo_from_env` (``gradio app.py``, an ``app.py`` calling ``demo.launch()``)
build the page in one function from the same flags, so both apply the same upload and image-size limits.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

__all__ = ["build_parser", "demo_from_env", "main"]

logger = logging.getLogger("retina_vqa.app")

DEFAULT_MODEL = "outputs/demo"
# A fundus photograph is 1-10 MB (a 24 MP JPEG at most ~15 MB); anything much larger is refused at upload.
DEFAULT_MAX_FILE_SIZE = "20mb"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retina_vqa.app",
        description="Serve a web page that answers questions about fundus photographs with a saved model: answer, "
        "candidate probabilities, Grad-CAM overlay, screening report (JSON), batch table.",
    )
    parser.add_argument(
        "--model_name_or_path",
        default=os.environ.get("RETINA_VQA_MODEL", DEFAULT_MODEL),
        help="Folder saved by run_vqa.py (or a hub id). Env RETINA_VQA_MODEL; default %(default)s (`make demo`).",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="Address to listen on; 127.0.0.1 (default) is this machine only, 0.0.0.0 every interface. "
        "Env GRADIO_SERVER_NAME.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="Port (default %(default)s). Env GRADIO_SERVER_PORT.",
    )
    parser.add_argument("--share", action="store_true", help="Also make a public gradio.live link (off unless given).")
    parser.add_argument(
        "--max_file_size",
        default=os.environ.get("RETINA_VQA_MAX_FILE_SIZE", DEFAULT_MAX_FILE_SIZE),
        help="Largest upload, e.g. 20mb, 500kb (default %(default)s). Env RETINA_VQA_MAX_FILE_SIZE.",
    )
    parser.add_argument(
        "--max_image_pixels",
        type=_positive_int,
        default=os.environ.get("RETINA_VQA_MAX_IMAGE_PIXELS") or None,
        help="Largest decoded photograph, width x height in pixels (default: 50000000, 50 MP; fundus cameras give up "
        "to ~24 MP); larger ones are refused from their header, before decoding. Pillow refuses above ~179 MP "
        "whatever this says. Env RETINA_VQA_MAX_IMAGE_PIXELS.",
    )
    parser.add_argument(
        "--answer_list",
        default=os.environ.get("RETINA_VQA_ANSWER_LIST") or None,
        metavar="FILE",
        help="Answers to rank, as `python -m retina_vqa.predict --answer_list` reads them (a saved "
        "answer_candidates.json, {question_type: [answers]} or one list); default: those saved with the model. "
        "Env RETINA_VQA_ANSWER_LIST.",
    )
    parser.add_argument(
        "--device",
        default=os.environ.get("RETINA_VQA_DEVICE") or None,
        help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu). Env RETINA_VQA_DEVICE.",
    )
    return parser


def _demo(args: argparse.Namespace) -> Any:
    """The queued page for parsed flags (`build_parser`), not launched, with the flags' upload and image-size limits:
    the one way `main` and `demo_from_env` build it."""
    try:
        from .layout import build_demo, parse_file_size
    except ImportError as error:
        raise ImportError(
            f"The web app needs Gradio ({error}): install the extra with `pip install -e .[app]` (or `make app`)."
        ) from error
    from .handlers import MAX_IMAGE_PIXELS, Answerer

    # Before the model loads, so that a typo fails at once.
    max_file_size = parse_file_size(args.max_file_size, name="--max_file_size (env RETINA_VQA_MAX_FILE_SIZE)")
    answerer = Answerer.load(
        args.model_name_or_path,
        device=args.device,
        answer_list=args.answer_list,
        max_image_pixels=args.max_image_pixels or MAX_IMAGE_PIXELS,
    )
    return build_demo(answerer, max_file_size=max_file_size)


def demo_from_env() -> Any:
    """The queued page as the environment variables configure it (``RETINA_VQA_MODEL`` on ``RETINA_VQA_DEVICE``,
    ...), not launched; ``demo.launch()`` keeps its upload limit."""
    return _demo(build_parser().parse_args([]))


def main(argv: list[str] | None = None) -> None:
    """Load the model, build the page and serve it until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up checks of its own URL, one per line
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number (0-65535).")
    try:
        demo = _demo(args)
    except (ImportError, OSError, ValueError) as error:
        # A missing model folder or Gradio: one line naming it and the fix, no traceback.
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    logger.info("Serving %s on http://%s:%d (share: %s)", args.model_name_or_path, args.host, args.port, args.share)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,  # the upload limit is the page's own (layout.Page): launch() keeps it
            show_error=False,  # a failure reaches the page as the handlers' one-line message, never a traceback
            ssr_mode=False,  # server-side rendering needs Node.js; the page renders in the browser
        )
    except OSError as error:
        parser.exit(2, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {error} (try --port).\n")


if __name__ == "__main__":
    main()
