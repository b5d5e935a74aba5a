"""Pictures of a run that need no model: sample predictions, training curves, the diagnosis confusion matrix and
the reliability of ranked answers' probabilities.

`plot_run` draws them into a finished run's output folder (``run_vqa.py`` calls it at the end of a run);
``python -m retina_vqa.visualize samples|curves|confusion`` draws them by hand. Grad-CAM maps, which need the
model, live in `retina_vqa.explain`.

This module imports neither torch nor the synthetic generator, so plotting costs a finished run nothing more
than matplotlib.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change), at a fixed
size in inches times :data:`DPI`, so every PNG's pixel size is known in advance.
"""

from __future__ import annotations

import json
import logging
import math
import random
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data.images import load_image
from .metrics import DEFAULT_DIAGNOSIS_LABELS, OTHER_LABEL, confusion_matrix
from .metrics.calibration import (
    NUM_BINS,
    REFERABLE_ANSWERS,
    expected_calibration_error,
    referable_probability,
    reliability_bins,
)
from .metrics.normalize import normalize_answer
from .metrics.screening import OperatingPoint, find_operating_points, roc_points

logger = logging.getLogger(__name__)

__all__ = [
    "DPI",
    "plot_calibration",
    "plot_confusion",
    "plot_curves",
    "plot_referable_roc",
    "plot_run",
    "plot_samples",
    "read_jsonl",
]

DPI = 100
# One cell of the samples grid, in inches (width, height), and the grid's number of columns.
SAMPLE_CELL_INCHES = (3.2, 4.2)
SAMPLE_COLUMNS = 4
CURVES_PANEL_INCHES = (5.5, 5.5)
CONFUSION_INCHES = (7.0, 6.0)
CALIBRATION_INCHES = (11.0, 5.0)
ROC_INCHES = (5.5, 5.5)
RIGHT, WRONG, UNKNOWN = "#1a7f37", "#cf222e", "#000000"

# Keys of the Trainer's eval logs that are not quality metrics.
_NOT_METRICS = ("runtime", "per_second", "num_examples", "samples", "confusion", "epoch", "flos")


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _save(fig: Figure, output: str | Path) -> tuple[int, int]:
    """Write `fig` as a PNG at :data:`DPI` and return its pixel size (width, height)."""
    FigureCanvasAgg(fig)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=DPI, format="png")
    width, height = fig.get_size_inches()
    return round(width * DPI), round(height * DPI)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (``predictions.jsonl``), blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _wrap(text: Any, width: int, max_lines: int = 3) -> str:
    return "\n".join(textwrap.wrap(str(text), width=width, max_lines=max_lines, placeholder=" ...")) or '""'


# ---------------------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------------------


def plot_samples(
    records: Sequence[Mapping[str, Any]],
    dataset: Any,
    output: str | Path,
    num: int = 16,
    seed: int = 0,
    image_column: str = "image",
) -> tuple[int, int]:
    """A grid of `num` random predictions: image, question, reference and prediction (green right, red wrong).

    `records` are rows of ``predictions.jsonl``; their ``id`` is the row of `dataset` (the predicted split).
    Returns the PNG's pixel size.
    """
    if not records:
        raise ValueError("No predictions to show.")
    chosen = random.Random(seed).sample(list(records), min(num, len(records)))
    chosen.sort(key=lambda r: r["id"])
    for record in chosen:
        if not 0 <= int(record["id"]) < len(dataset):
            raise ValueError(
                f"Prediction id {record['id']} is outside the split's {len(dataset)} rows: "
                "pass the dataset and split the predictions were made on."
            )
    images = dataset.select([int(r["id"]) for r in chosen])[image_column]
    columns = min(SAMPLE_COLUMNS, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    fig = Figure(figsize=(SAMPLE_CELL_INCHES[0] * columns, SAMPLE_CELL_INCHES[1] * rows))
    for k, (record, image) in enumerate(zip(chosen, images, strict=True)):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(load_image(image, where=f"row {record['id']}"))
        ax.set_xticks([])
        ax.set_yticks([])
        correct = record.get("correct")
        colour = UNKNOWN if correct is None else (RIGHT if correct else WRONG)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_title(f"#{record['id']} Q: {_wrap(record.get('question', ''), 34)}", fontsize=8, loc="left")
        lines = []
        if "reference" in record:
            lines.append(f"ref:  {_wrap(record['reference'], 34)}")
        lines.append(f"pred: {_wrap(record.get('prediction', ''), 34)}")
        ax.set_xlabel("\n".join(lines), fontsize=8, color=colour, loc="left", fontfamily="monospace")
    height = SAMPLE_CELL_INCHES[1] * rows
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.5 / height, bottom=0.8 / height, wspace=0.08, hspace=0.55)
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------------------
# curves
# ---------------------------------------------------------------------------------------------------------


def _series(log_history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [
        (entry["step"], entry[key])
        for entry in log_history
        if key in entry and "step" in entry and isinstance(entry[key], (int, float))
    ]
    return [p[0] for p in points], [float(p[1]) for p in points]


def plot_curves(trainer_state: Mapping[str, Any], output: str | Path) -> tuple[int, int]:
    """Training/eval loss, overall eval metrics and (when logged) exact match per question type vs step.

    Reads ``log_history`` of a Trainer's ``trainer_state.json``; whatever metrics were logged are drawn.
    Returns the PNG's pixel size.
    """
    history = trainer_state.get("log_history", [])
    keys = sorted({k for entry in history for k in entry})
    losses = [k for k in ("loss", "eval_loss") if k in keys]
    metrics = [
        k
        for k in keys
        if k.startswith("eval_") and k != "eval_loss" and "/" not in k and not any(word in k for word in _NOT_METRICS)
    ]
    per_type = [k for k in keys if k.startswith("eval_exact_match/")]
    panels = [("loss", losses), ("eval metrics", metrics), ("eval exact match per question type", per_type)]
    panels = [p for p in panels if p[1]] or [("no metrics logged", [])]
    fig = Figure(figsize=(CURVES_PANEL_INCHES[0] * len(panels), CURVES_PANEL_INCHES[1]))
    for i, (title, names) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name in names:
            steps, values = _series(history, name)
            label = name.removeprefix("eval_exact_match/") if name.startswith("eval_exact_match/") else name
            # A single point needs a marker to show at all; evaluations are points in time, so mark them too.
            marker = "o" if name.startswith("eval") or len(steps) == 1 else None
            ax.plot(steps, values, "-", label=label, marker=marker, ms=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if names:
            ax.legend(
                fontsize=7,
                ncol=min(3, len(names)),
                loc="upper center",
                bbox_to_anchor=(0.5, -0.14),
                frameon=False,
            )
        if title != "loss" and names:
            ax.set_ylim(-0.02, 1.02)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.93, bottom=0.36, wspace=0.22)
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------------------
# confusion
# ---------------------------------------------------------------------------------------------------------


def plot_confusion(
    records: Sequence[Mapping[str, Any]],
    output: str | Path,
    question_type: str = "diagnosis",
    labels: Sequence[str] = DEFAULT_DIAGNOSIS_LABELS,
) -> tuple[int, int]:
    """Confusion matrix of the `question_type` questions (rows reference, columns prediction + "other")."""
    rows = [r for r in records if r.get("question_type") == question_type and "reference" in r]
    matrix = np.array(confusion_matrix([r["reference"] for r in rows], [r.get("prediction", "") for r in rows], labels))
    fig = Figure(figsize=CONFUSION_INCHES)
    ax = fig.add_subplot(1, 1, 1)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    shown = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(matrix.shape[1]), [*labels, OTHER_LABEL], rotation=35, ha="right")
    ax.set_yticks(range(matrix.shape[0]), list(labels))
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    accuracy = np.trace(matrix[:, : len(labels)]) / matrix.sum() if matrix.sum() else float("nan")
    ax.set_title(f"{question_type}: {int(matrix.sum())} questions, accuracy {accuracy:.3f}", fontsize=10)
    fig.colorbar(shown, ax=ax, label="share of the reference row")
    fig.subplots_adjust(left=0.2, right=0.95, top=0.93, bottom=0.2)
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------------


def plot_calibration(
    records: Sequence[Mapping[str, Any]],
    output: str | Path,
    question_type: str = "diagnosis",
    num_bins: int = NUM_BINS,
    uncalibrated: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[int, int]:
    """Reliability diagram of the ranked answers in `records` (rows of ``predictions.jsonl`` with
    ``answer_scores`` and a reference): accuracy against the top probability in `num_bins` equal-width bins, for all
    ranked questions (bars) and the `question_type` ones, next to how many answers fall in each bin. The
    probabilities are those written (temperature-scaled when the model was calibrated); `uncalibrated` (the same
    rows at temperature 1) adds their curve, to show what temperature scaling changed."""
    ranked = [r for r in records if r.get("answer_scores") and "correct" in r]
    if not ranked:
        raise ValueError("No ranked answers with references: run with --answer_mode rank or auto on labelled data.")
    scaled = " (temperature-scaled)" if uncalibrated else ""
    groups = [(f"all ranked questions{scaled}", ranked, "#4c72b0")]
    chosen = [r for r in ranked if r.get("question_type") == question_type]
    if chosen:
        groups.append((f"{question_type}{scaled}", chosen, "#dd8452"))
    before = [r for r in uncalibrated or () if r.get("answer_scores") and "correct" in r]
    if before:
        groups.append(("all ranked questions, temperature 1", before, "#c44e52"))
    fig = Figure(figsize=CALIBRATION_INCHES)
    reliability, counts = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    reliability.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / num_bins
    for k, (name, rows, colour) in enumerate(groups):
        confidence = [max(r["answer_scores"].values()) for r in rows]
        correct = [bool(r["correct"]) for r in rows]
        bins = reliability_bins(confidence, correct, num_bins)
        ece = expected_calibration_error(confidence, correct, num_bins)
        filled = [b for b in bins if b["count"]]
        label = f"{name}: {len(rows)}, ECE {ece:.3f}"
        if k == 0:
            centres = [b["lower"] + width / 2 for b in filled]
            accuracy = [b["accuracy"] for b in filled]
            reliability.bar(centres, accuracy, width=width * 0.9, color=colour, alpha=0.6, label=label)
        else:
            points = ([b["confidence"] for b in filled], [b["accuracy"] for b in filled])
            reliability.plot(*points, "o-", color=colour, label=label)
        share = 0.8 / len(groups)
        offset = (k - (len(groups) - 1) / 2) * width * share
        centres = [b["lower"] + width / 2 + offset for b in bins]
        counts.bar(centres, [b["count"] for b in bins], width=width * share, label=name, color=colour)
    reliability.set_xlim(0, 1)
    reliability.set_ylim(0, 1.02)
    reliability.set_xlabel("top probability (confidence)")
    reliability.set_ylabel("accuracy")
    reliability.set_title(f"reliability, {num_bins} equal-width bins", fontsize=10)
    reliability.legend(fontsize=8, loc="upper left")
    reliability.grid(alpha=0.3)
    counts.set_xlim(0, 1)
    counts.set_xlabel("top probability (confidence)")
    counts.set_ylabel("answers")
    counts.set_title("answers per bin", fontsize=10)
    counts.legend(fontsize=8, loc="upper left")
    counts.grid(alpha=0.3)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.92, bottom=0.12, wspace=0.22)
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------------------
# End of a run
# ---------------------------------------------------------------------------------------------------------


def plot_referable_roc(
    records: Sequence[Mapping[str, Any]],
    output: str | Path,
    points: Sequence[OperatingPoint] = (),
    question_type: str = "diagnosis",
) -> tuple[int, int]:
    """ROC curve of P(referable DR) (the summed probability of moderate, severe and proliferative DR) over the ranked
    `question_type` rows of ``predictions.jsonl`` with a reference, the saved operating points marked where their
    thresholds fall on these rows."""
    rows = [
        r for r in records if r.get("question_type") == question_type and r.get("answer_scores") and "reference" in r
    ]
    referable = {normalize_answer(a) for a in REFERABLE_ANSWERS}
    scores = [referable_probability(list(r["answer_scores"]), list(r["answer_scores"].values())) for r in rows]
    labels = [normalize_answer(r["reference"]) in referable for r in rows]
    curve = roc_points(scores, labels)  # raises without both classes
    fig = Figure(figsize=ROC_INCHES, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    fpr, tpr = np.asarray(curve.fpr), np.asarray(curve.tpr)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids
    ax.plot(curve.fpr, curve.tpr, "-", color="#4c72b0", lw=2, label=f"P(referable), AUC {area:.3f}")
    scores_array, labels_array = np.asarray(scores), np.asarray(labels, dtype=bool)
    for point, colour in zip(points, ("#dd8452", "#55a868", "#c44e52", "#8172b3"), strict=False):
        referred = scores_array >= point.threshold
        tpr = referred[labels_array].mean() if labels_array.any() else float("nan")
        fpr = referred[~labels_array].mean() if (~labels_array).any() else float("nan")
        ax.plot(
            [fpr], [tpr], "o", color=colour, ms=9, label=f"{point.name.replace('_', ' ')} (p >= {point.threshold:.3f})"
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"referable DR, {len(rows)} {question_type} answers", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, output)


def plot_run(
    output_dir: str | Path,
    predict_dataset: Any = None,
    image_column: str = "image",
    num: int = 16,
    seed: int = 0,
) -> list[Path]:
    """The end-of-run pictures in `output_dir`: ``curves.png`` (from ``trainer_state.json``), and, when
    ``predictions.jsonl`` exists, ``confusion.png``, (given the predicted split) ``samples.png`` and (when it holds
    ranked answers) ``calibration.png`` and, for ranked diagnosis answers, ``roc.png`` (the saved operating points
    marked).

    A picture that fails is logged and skipped, so a finished run is never lost to plotting. Returns the
    paths written.
    """
    output_dir = Path(output_dir)
    state, predictions = output_dir / "trainer_state.json", output_dir / "predictions.jsonl"
    jobs = []
    if state.exists():
        jobs.append(("curves.png", lambda path: plot_curves(json.loads(state.read_text()), path)))
    if predictions.exists():
        records = read_jsonl(predictions)
        jobs.append(("confusion.png", lambda path: plot_confusion(records, path)))
        if any(r.get("answer_scores") for r in records):
            jobs.append(("calibration.png", lambda path: plot_calibration(records, path)))
            if any(r.get("question_type") == "diagnosis" and r.get("answer_scores") for r in records):
                points = find_operating_points(output_dir) or []
                jobs.append(("roc.png", lambda path: plot_referable_roc(records, path, points)))
        if predict_dataset is not None:
            jobs.append(
                (
                    "samples.png",
                    lambda path: plot_samples(records, predict_dataset, path, num, seed, image_column),
                )
            )
    written = []
    for name, job in jobs:
        try:
            job(output_dir / name)
        except Exception as error:  # a picture must not fail a finished run
            logger.warning("Could not draw %s: %s", name, error)
        else:
            written.append(output_dir / name)
    return written
