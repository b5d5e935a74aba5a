"""`python -m retina_vqa.app`'s command line: defaults safe for a laptop, settings from the environment for a
hosted Space, and one-line errors."""

from __future__ import annotations

import pytest

from retina_vqa.app.__main__ import DEFAULT_MAX_FILE_SIZE, DEFAULT_MODEL, build_parser, main

ENV = (
    "RETINA_VQA_MODEL",
    "RETINA_VQA_DEVICE",
    "RETINA_VQA_MAX_FILE_SIZE",
    "RETINA_VQA_MAX_IMAGE_PIXELS",
    "RETINA_VQA_ANSWER_LIST",
    "GRADIO_SERVER_NAME",
    "GRADIO_SERVER_PORT",
)


def test_defaults_listen_on_this_machine_only_without_a_public_link(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    assert (args.model_name_or_path, args.max_file_size, args.device, args.answer_list) == (
        DEFAULT_MODEL,
        DEFAULT_MAX_FILE_SIZE,
        None,
        None,
    )
    assert args.max_image_pixels is None  # the page's own, retina_vqa.app.handlers.MAX_IMAGE_PIXELS


def test_a_space_configures_it_through_the_environment(monkeypatch):
    values = ("hub-user/retina-vqa", "cpu", "5mb", "60000000", "lists.json", "0.0.0.0", "7861")
    for name, value in zip(ENV, values, strict=True):
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args([])
    settings = (args.model_name_or_path, args.device, args.max_file_size, args.max_image_pixels, args.answer_list)
    assert settings == ("hub-user/retina-vqa", "cpu", "5mb", 60_000_000, "lists.json")
    assert (args.host, args.port) == ("0.0.0.0", 7861)
    # Flags win over the environment.
    assert build_parser().parse_args(["--host", "127.0.0.1"]).host == "127.0.0.1"


def test_a_missing_model_folder_is_one_line_naming_it(tmp_path, capsys):
    pytest.importorskip("gradio", reason="the app extra: `pip install -e .[app]`")
    missing = tmp_path / "no-model"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(missing)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m retina_vqa.app: error:") and str(missing) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "50MP"])
def test_a_pixel_limit_that_is_not_a_positive_number_is_refused(capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--max_image_pixels", value])
    assert exit_info.value.code == 2
    assert f"--max_image_pixels: {value!r} is not a positive whole number" in capsys.readouterr().err


def test_an_upload_limit_that_is_not_a_size_is_one_line_before_the_model_loads(tmp_path, capsys):
    pytest.importorskip("gradio", reason="the app extra: `pip install -e .[app]`")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tmp_path / "no-model"), "--max_file_size", "20 megs"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "python -m retina_vqa.app: error: --max_file_size (env RETINA_VQA_MAX_FILE_SIZE) '20 megs' is not a size: "
        "give bytes or a number with a unit, e.g. 20mb, 500kb.\n"
    )


def test_a_port_out_of_range_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "70000"])
    assert exit_info.value.code == 2
    assert "--port 70000 is not a port number" in capsys.readouterr().err


def test_the_module_level_builder_reads_the_environment_and_queues(app_model_dir, monkeypatch):
    """What a Space's ``app.py`` runs: the page for ``RETINA_VQA_MODEL``, with one queued worker."""
    pytest.importorskip("gradio", reason="the app extra: `pip install -e .[app]`")
    from retina_vqa.app import build_demo_from_env

    monkeypatch.setenv("RETINA_VQA_MODEL", str(app_model_dir))
    monkeypatch.setenv("RETINA_VQA_DEVICE", "cpu")
    demo = build_demo_from_env()
    assert demo._queue.default_concurrency_limit == 1
    assert {fn.api_name for fn in demo.fns.values()} >= {"ask", "report", "batch"}
    assert str(app_model_dir) in demo.title + str(demo.config)
