"""Loading only what cannot run code: safetensors, no pickles from user files, no remote code by default."""

import ast
from pathlib import Path

from retina_vqa.arguments import ModelArguments

SRC = Path(__file__).resolve().parents[1] / "src" / "retina_vqa"


def test_no_torch_load_without_weights_only():
    offenders = []
    paths = [*SRC.rglob("*.py"), SRC.parents[1] / "run_vqa.py"]
    assert len(paths) > 20  # every module of every subpackage
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load":
                owner = getattr(node.func.value, "id", None)
                weights_only = any(
                    k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords
                )
                if owner in ("torch", "pickle") and not weights_only:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders


def test_remote_code_is_off_unless_asked(tmp_path):
    """A checkpoint folder that ships its own modelling code does not get to run it: the default is off, and the
    loader passes the setting on rather than letting transformers decide."""
    import json

    from transformers import AutoProcessor

    from retina_vqa.training.model_setup import load_model

    from .helpers import TINY_CONFIG, make_tiny_model

    assert ModelArguments(model_name_or_path="x").trust_remote_code is False
    folder = tmp_path / "checkpoint"
    make_tiny_model().save_pretrained(folder)
    AutoProcessor.from_pretrained(TINY_CONFIG).save_pretrained(folder)
    sentinel = tmp_path / "remote-code-ran"
    (folder / "evil_modeling.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\n"
        "from transformers import BlipForQuestionAnswering\n"
        "class Evil(BlipForQuestionAnswering):\n    pass\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForVisualQuestionAnswering": "evil_modeling.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(ModelArguments(model_name_or_path=str(folder)), AutoProcessor.from_pretrained(folder))
    assert type(model).__name__ == "SharedImageBlipForQuestionAnswering"
    assert not sentinel.exists()
