"""The page as a server serves it: the upload limit of `python -m retina_vqa.app` and of a Space's ``app.py``
(`build_demo_from_env` then ``demo.launch()``), and Gradio's cache of uploads emptied on schedule and at shutdown.

Each test launches the page in this process on a free port of 127.0.0.1 and talks to it over HTTP.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from retina_vqa.app.__main__ import main
from retina_vqa.app.screenshot import free_port

pytestmark = pytest.mark.e2e  # real processes / servers: left out of `make test-fast`

gr = pytest.importorskip("gradio", reason="the app extra: `pip install -e .[app]`")
httpx = pytest.importorskip("httpx", reason="comes with Gradio (`pip install -e .[app]`)")


@pytest.fixture
def served(monkeypatch, tmp_path):
    """``serve(how, model_dir, max_file_size=None)``: launch the page for `model_dir` the way `how` says ("cli":
    `main`, "env": an ``app.py`` calling ``build_demo_from_env().launch()``), with uploads in ``tmp_path / "gradio"``;
    its URL and page. Every page is closed at the end of the test."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    launched = []
    original_launch = gr.Blocks.launch

    def launch(self, *args, **kwargs):
        # As the caller asks, but returning once the server is up instead of serving until interrupted.
        launched.append(self)
        return original_launch(self, *args, prevent_thread_lock=True, quiet=True, **kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", launch)

    def serve(how: str, model_dir: Path, max_file_size: str | None = None) -> tuple[str, gr.Blocks]:
        port = free_port()
        if how == "cli":
            argv = ["--model_name_or_path", str(model_dir), "--port", str(port), "--device", "cpu"]
            main(argv + (["--max_file_size", max_file_size] if max_file_size else []))
        else:
            from retina_vqa.app import build_demo_from_env

            monkeypatch.setenv("RETINA_VQA_MODEL", str(model_dir))
            monkeypatch.setenv("RETINA_VQA_DEVICE", "cpu")
            if max_file_size:
                monkeypatch.setenv("RETINA_VQA_MAX_FILE_SIZE", max_file_size)
            build_demo_from_env().launch(server_name="127.0.0.1", server_port=port, ssr_mode=False)
        return f"http://127.0.0.1:{port}/", launched[-1]

    yield serve
    for demo in launched:
        demo.close(verbose=False)


def upload(url: str, data: bytes, name: str = "fundus.png") -> httpx.Response:
    """POST a file to the page's upload endpoint, as the browser does when a file is dropped on it."""
    with httpx.Client(trust_env=False, timeout=60) as client:
        return client.post(url + "gradio_api/upload", files=[("files", (name, data, "image/png"))])


def load(url: str, path: str) -> list:
    """The page's "load" event (a file put in the upload box) for the upload at `path`: its outputs."""
    with httpx.Client(trust_env=False, timeout=60) as client:
        data = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}
        event = client.post(url + "gradio_api/call/load", json=data).json()["event_id"]
        stream = client.get(url + f"gradio_api/call/load/{event}").text
    assert "event: complete" in stream, stream
    return json.loads(stream.split("event: complete\ndata:", 1)[1].strip().splitlines()[0])


def png_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", size, (90, 30, 10)).save(data, format="PNG")
    return data.getvalue()


@pytest.mark.parametrize("how", ["cli", "env"])
def test_both_ways_of_serving_refuse_uploads_over_the_limit(served, app_model_dir, how):
    url, demo = served(how, app_model_dir, max_file_size="2kb")
    small = png_bytes()
    assert len(small) < 2048
    assert upload(url, small).status_code == 200
    refused = upload(url, small + bytes(4096))
    assert refused.status_code == 413
    assert "maximum allowed size" in refused.text
    assert demo.max_file_size == 2048


def test_a_space_gets_the_default_limit(served, app_model_dir, monkeypatch):
    from retina_vqa.app.__main__ import DEFAULT_MAX_FILE_SIZE
    from retina_vqa.app.layout import parse_file_size

    monkeypatch.delenv("RETINA_VQA_MAX_FILE_SIZE", raising=False)
    url, demo = served("env", app_model_dir)
    assert demo.max_file_size == parse_file_size(DEFAULT_MAX_FILE_SIZE) == 20 * 1024 * 1024
    assert upload(url, bytes(21 * 1024 * 1024)).status_code == 413


def test_the_page_keeps_its_limit_when_launch_or_mount_pass_none():
    from retina_vqa.app.layout import Page

    page = Page(max_file_size=2048)
    page.max_file_size = None  # what launch() and gr.mount_gradio_app() set by default
    assert page.max_file_size == 2048
    page.max_file_size = 1024  # launch(max_file_size="1kb"), parsed by Gradio
    assert page.max_file_size == 1024


def test_uploads_are_deleted_on_schedule(served, app_model_dir, monkeypatch):
    from retina_vqa.app import layout

    monkeypatch.setattr(layout, "CACHE_CLEANUP", (1, 1))  # every second, files older than a second
    url, demo = served("env", app_model_dir)
    assert demo.delete_cache == (1, 1)
    (path,) = upload(url, png_bytes()).json()
    assert Path(path).is_file()
    deadline = time.monotonic() + 30
    while Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(path).exists()
    # A page still holding the deleted upload gets a message, not an error.
    preview, message = load(url, path)
    assert preview is None
    assert message.startswith("Cannot load image from the upload 'fundus.png': the file cannot be read")
    assert message.endswith("Upload it again.")


def test_uploads_are_deleted_when_the_server_stops(served, app_model_dir):
    from retina_vqa.app.layout import CACHE_CLEANUP

    url, demo = served("cli", app_model_dir)
    assert demo.delete_cache == CACHE_CLEANUP
    frequency, age = CACHE_CLEANUP
    assert frequency <= age <= 24 * 3600  # checked at least as often as files expire; nothing kept for days
    (path,) = upload(url, png_bytes()).json()
    assert Path(path).is_file()
    demo.close(verbose=False)
    assert not Path(path).exists()
