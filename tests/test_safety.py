"""Loading only what cannot run code: safetensors, no pickles from user files, no remote code by default."""

import ast
from pathlib import Path

from retina_vqa.arguments import ModelArguments

SRC = Path(__file__).resolve().parents[1] / "src" / "retina_vqa"


def test_no_torch_load_without_weights_only():
    offenders = []
    for path in [*SRC.glob("*.py"), SRC.parents[1] / "run_vqa.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load":
                owner = getattr(node.func.value, "id", None)
                weights_only = any(
                    k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords
                )
                if owner in ("torch", "pickle") and not weights_only:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders


def test_remote_code_is_off_unless_asked():
    assert ModelArguments(model_name_or_path="x").trust_remote_code is False
