"""The ablation table of the demo's accuracy levers: one markdown row per finished run_vqa.py output folder.

Each row reads what the run wrote (``all_results.json``, ``trainer_state.json``): training time and samples/s,
validation diagnosis accuracy / QWK (the last per-epoch evaluation, the half of the validation split that
configs/demo.yaml evaluates), test diagnosis accuracy / QWK / macro AUROC, referable-DR sensitivity / specificity
per eye at the answered grade, which-eye accuracy and exact match over every test question. Nothing is trained
here: the runs are the commands in bench/README.md ("Demo accuracy levers"), each with its own ``--output_dir``.

    python bench/demo_levers.py outputs/demo outputs/demo-augment outputs/demo-augment-image
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (
    "run",
    "training",
    "validation diagnosis / QWK",
    "test diagnosis / QWK / macro AUROC",
    "test referable sens. / spec. (eye)",
    "test laterality",
    "test exact match",
)


def row(folder: Path) -> list[str]:
    """One table row of the run in `folder`."""
    results = json.loads((folder / "all_results.json").read_text())
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    evaluations = [h for h in history if "eval_exact_match/diagnosis" in h]
    last = evaluations[-1] if evaluations else {}

    def number(key: str, source: dict = results) -> str:
        value = source.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    minutes = results.get("train_runtime", float("nan")) / 60
    return [
        folder.name,
        f"{minutes:.1f} min, {results.get('train_samples_per_second', float('nan')):.0f} samples/s",
        f"{number('eval_exact_match/diagnosis', last)} / {number('eval_diagnosis_qwk', last)}",
        f"{number('predict_exact_match/diagnosis')} / {number('predict_diagnosis_qwk')} / "
        f"{number('predict_diagnosis_macro_auroc')}",
        f"{number('predict_diagnosis_referable_sensitivity')} / {number('predict_diagnosis_referable_specificity')}",
        number("predict_exact_match/laterality"),
        number("predict_exact_match"),
    ]


def table(folders: list[Path]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(folder)) + " |" for folder in folders]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run_vqa.py output folders (train, eval and predict)")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not (f / "all_results.json").is_file()]
    if missing:
        parser.error(f"no all_results.json in {missing}: run run_vqa.py with --do_train --do_eval --do_predict there")
    print(table(args.folders))


if __name__ == "__main__":
    main()
