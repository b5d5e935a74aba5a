"""The web app: ask a fine-tuned model about a fundus photograph in the browser (Gradio).

    python -m retina_vqa.app --model_name_or_path outputs/demo [--host 127.0.0.1 --port 7860 --share]

Parts: `handlers` (the model behind a lock, one function per button, errors as messages in the page), `layout`
(the page), `__main__` (the command line and launch settings), `screenshot` (the README's picture, taken in
Chromium). Gradio is an optional extra: ``pip install -e .[app]``.

As a Hugging Face Space (SDK ``gradio``): an ``app.py`` of two lines runs the same page unchanged, configured by
environment variables (`retina_vqa.app.__main__` lists them; the Space sets ``GRADIO_SERVER_NAME=0.0.0.0``)::

    from retina_vqa.app.__main__ import main
    main([])

`build_demo_from_env` is the module-level way to build the page (``demo = build_demo_from_env()``, then
``demo.launch()``) for ``gradio app.py`` or for mounting it in another server; it applies the same upload and image
size limits as the command line, and ``launch()`` or ``gr.mount_gradio_app()`` without ``max_file_size`` keeps them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_demo", "build_demo_from_env"]


def build_demo(*args: Any, **kwargs: Any) -> Any:
    """`retina_vqa.app.layout.build_demo` (imported on first use: gradio is an optional extra)."""
    from .layout import build_demo as build

    return build(*args, **kwargs)


def build_demo_from_env() -> Any:
    """The page for the model named by ``RETINA_VQA_MODEL`` (default ``outputs/demo``), queued, not launched, with
    the command line's limits as the environment sets them (``RETINA_VQA_MAX_FILE_SIZE``, ...)."""
    from .__main__ import demo_from_env

    return demo_from_env()
