"""Pictures of a run: sample predictions, training curves, the diagnosis confusion matrix, and Grad-CAM maps.

    python -m retina_vqa.visualize samples --predictions OUT/predictions.jsonl --dataset_dir DATA \\
        --split test --output samples.png [--num 16 --seed 0]
    python -m retina_vqa.visualize curves --trainer_state OUT/trainer_state.json --output curves.png
    python -m retina_vqa.visualize confusion --predictions OUT/predictions.jsonl --output confusion.png
    python -m retina_vqa.visualize attention --model_name_or_path OUT --image fundus.png \\
        --question "are there haemorrhages?" --output att.png [--layer -1 --per_token]
    python -m retina_vqa.visualize pointing --model_name_or_path OUT --dataset_dir DATA --split test \\
        [--max_examples 200 --tolerance 0.02 --output_json pointing.json]

Grad-CAM for BLIP VQA. The answer decoder never sees pixels: it cross-attends to the encoded question, and
the question encoder is the only part that cross-attends to the image patches. The map is therefore taken
from the question encoder's cross-attention probabilities A (heads x question tokens x image tokens) of one
layer and their gradient G with respect to the log-likelihood of the model's own answer (teacher forced,
without label smoothing): ``mean over heads of A * relu(G)``, averaged over the question's tokens (or one
map per token), without the image ``[CLS]`` token, reshaped to the patch grid and scaled to [0, 1].

The pointing game checks whether a map's maximum falls on a lesion of the kind a presence question asks
about, next to two maps that know nothing: a uniformly random location inside the field of view (computed
exactly as the share of field-of-view pixels on a lesion box) and the image centre.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change), at a fixed
size in inches times :data:`DPI`, so every PNG's pixel size is known in advance.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from .attention import attention_implementation, set_attention_implementation
from .generation import encode_questions, generate_answers
from .images import ImageLoadError, load_image
from .metrics import DEFAULT_DIAGNOSIS_LABELS, OTHER_LABEL, confusion_matrix
from .synthetic import _PRESENCE_TYPES, FOV_RADIUS_FRACTION

logger = logging.getLogger(__name__)

__all__ = [
    "DPI",
    "PRESENCE_LESION_TYPES",
    "gradcam_map",
    "overlay",
    "plot_attention",
    "plot_confusion",
    "plot_curves",
    "plot_run",
    "plot_samples",
    "pointing_game",
    "upsample",
]

DPI = 100
# One cell of the samples grid, in inches (width, height), and the grid's number of columns.
SAMPLE_CELL_INCHES = (3.2, 4.2)
SAMPLE_COLUMNS = 4
CURVES_PANEL_INCHES = (5.5, 5.5)
CONFUSION_INCHES = (7.0, 6.0)
ATTENTION_INCHES = (10.0, 5.0)
TOKEN_CELL_INCHES = (2.6, 2.9)
RIGHT, WRONG, UNKNOWN = "#1a7f37", "#cf222e", "#000000"

# Lesion-presence question type -> lesion types that make its answer "yes" (as in the synthetic data).
PRESENCE_LESION_TYPES: dict[str, tuple[str, ...]] = dict(_PRESENCE_TYPES)

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
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _wrap(text: Any, width: int, max_lines: int = 3) -> str:
    return "\n".join(textwrap.wrap(str(text), width=width, max_lines=max_lines, placeholder=" ...")) or '""'


def _load_split(dataset_dir: str | Path, split: str):
    from .data import _load_saved

    splits = _load_saved(str(dataset_dir))
    if split not in splits:
        raise ValueError(f"Split {split!r} not in {dataset_dir}; it has {sorted(splits)}.")
    return splits[split]


def load_model_and_processor(model_name_or_path: str | Path):
    """A saved `BlipForQuestionAnswering` ready to answer (`retina_vqa.predict.load_for_inference`) and its
    processor; `gradcam_map` switches it to eager attention while it reads the attention probabilities."""
    from .predict import load_for_inference

    return load_for_inference(model_name_or_path)


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


def plot_run(
    output_dir: str | Path,
    predict_dataset: Any = None,
    image_column: str = "image",
    num: int = 16,
    seed: int = 0,
) -> list[Path]:
    """The end-of-run pictures in `output_dir`: ``curves.png`` (from ``trainer_state.json``), and, when
    ``predictions.jsonl`` exists, ``confusion.png`` and (given the predicted split) ``samples.png``.

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


# ---------------------------------------------------------------------------------------------------------
# Grad-CAM of the question encoder's cross-attention
# ---------------------------------------------------------------------------------------------------------


def _encode(model: Any, processor: Any, image: Any, question: str) -> dict[str, torch.Tensor]:
    image = load_image(image)
    pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    text = processor.tokenizer(question, return_tensors="pt", truncation=True, return_token_type_ids=False)
    device = next(model.parameters()).device
    return {
        "pixel_values": pixel_values.to(device=device, dtype=next(model.vision_model.parameters()).dtype),
        "input_ids": text["input_ids"].to(device),
        "attention_mask": text["attention_mask"].to(device),
    }


def _trim_answer(ids: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """Generated ``[DEC] ... [SEP] pad...`` -> ``[DEC] ... [SEP]`` (or everything, if no [SEP] came)."""
    ends = (ids[1:] == sep_token_id).nonzero()
    return ids[: int(ends[0]) + 2] if len(ends) else ids


def gradcam_map(
    model: Any,
    processor: Any,
    image: Any,
    question: str,
    layer: int = -1,
    per_token: bool = False,
    max_new_tokens: int = 20,
    interpolate_pos_encoding: bool | None = None,
) -> tuple[np.ndarray, str]:
    """Grad-CAM of one question-encoder cross-attention layer for the model's own answer.

    Args:
        model: a `BlipForQuestionAnswering`. It runs with eager attention (and the cross-attention mask fix)
            during the call, whatever it was given with; its attention implementation is restored after.
        processor: its processor; images are resized by its image processor.
        image: anything :func:`retina_vqa.images.load_image` reads.
        question: the question text.
        layer: index into ``model.text_encoder.encoder.layer``.
        per_token: one map per question token (``[CLS]`` ... ``[SEP]``) instead of their mean.
        max_new_tokens: answer length limit for generation.
        interpolate_pos_encoding: default: on when the processor's image size differs from the model's.

    Returns:
        ``(map, answer)``: a float32 array in [0, 1] of shape ``(grid, grid)`` (or ``(tokens, grid, grid)``)
        over the ViT patch grid, each map scaled by its min and max (all zeros when constant), and the
        decoded generated answer. The model's parameters get no gradients and its train/eval mode is kept.
    """
    inputs = _encode(model, processor, image, question)
    pixel_values, input_ids, attention_mask = (
        inputs["pixel_values"],
        inputs["input_ids"],
        inputs["attention_mask"],
    )
    patch = model.config.vision_config.patch_size
    height, width = pixel_values.shape[-2:]
    grid_h, grid_w = height // patch, width // patch
    if interpolate_pos_encoding is None:
        interpolate_pos_encoding = (height, width) != (model.config.vision_config.image_size,) * 2
    layers = model.text_encoder.encoder.layer
    attention = layers[layer].crossattention.self
    captured: list[torch.Tensor] = []

    def keep_probs(module: torch.nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        captured.append(output[1])

    was_training = model.training
    implementation = attention_implementation(model)
    set_attention_implementation(model, "eager")  # the fused kernels return no probabilities
    model.eval()
    try:
        generated = generate_answers(
            model,
            pixel_values,
            input_ids,
            attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
            max_new_tokens=max_new_tokens,
        )[0]
        answer_ids = _trim_answer(generated, model.config.text_config.sep_token_id)[None]
        answer = processor.tokenizer.decode(answer_ids[0], skip_special_tokens=True).strip()
        with torch.no_grad():
            image_embeds = model.vision_model(
                pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
            ).last_hidden_state
        handle = attention.register_forward_hook(keep_probs)
        try:
            with torch.enable_grad():
                # A leaf that needs grad: the attention probabilities get a gradient even in a frozen model.
                image_embeds = image_embeds.detach().requires_grad_(True)
                question_embeds = encode_questions(model, image_embeds, input_ids, attention_mask)
                logits = model.text_decoder(
                    input_ids=answer_ids,
                    attention_mask=torch.ones_like(answer_ids),
                    encoder_hidden_states=question_embeds,
                    encoder_attention_mask=attention_mask,
                    use_cache=False,
                ).logits
                # Teacher-forced log-likelihood of the answer after [DEC] (no label smoothing).
                log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                log_likelihood = log_probs.gather(-1, answer_ids[:, 1:, None]).sum()
                (probs,) = captured
                (grad,) = torch.autograd.grad(log_likelihood, probs)
        finally:
            handle.remove()
    finally:
        model.train(was_training)
        set_attention_implementation(model, implementation)

    cam = (probs.detach().float() * grad.float().clamp(min=0)).mean(dim=1)[0]  # (question tokens, image tokens)
    cam = cam[attention_mask[0].bool(), 1:]  # real question tokens; drop the image [CLS]
    if cam.shape[-1] != grid_h * grid_w:
        raise ValueError(f"{cam.shape[-1]} image patches do not form the {grid_h}x{grid_w} patch grid.")
    maps = cam.reshape(-1, grid_h, grid_w) if per_token else cam.mean(dim=0, keepdim=True).reshape(1, grid_h, grid_w)
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    maps = torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
    result = maps.cpu().numpy().astype(np.float32)
    return (result if per_token else result[0]), answer


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size`` = (width, height), as PIL sizes are given."""
    tensor = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def overlay(image: Any, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> Image.Image:
    """The map (values in [0, 1]) upsampled to the image and blended over it with a colormap."""
    image = load_image(image)
    values = np.clip(upsample(heatmap, image.size), 0.0, 1.0)
    colours = colormaps[cmap](values)[..., :3]
    blended = (1 - alpha) * (np.asarray(image, dtype=np.float32) / 255.0) + alpha * colours
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8))


def plot_attention(
    model: Any,
    processor: Any,
    image: Any,
    question: str,
    output: str | Path,
    layer: int = -1,
    per_token: bool = False,
) -> tuple[int, int]:
    """The fundus next to its Grad-CAM overlay (or one overlay per question token), titled with Q and A."""
    image = load_image(image)
    heatmap, answer = gradcam_map(model, processor, image, question, layer=layer, per_token=per_token)
    depth = len(model.text_encoder.encoder.layer)
    where = f"text encoder cross-attention layer {layer % depth + 1} of {depth}"
    title = f"Q: {question}\nA: {answer or '(empty)'}   [Grad-CAM, {where}]"
    if not per_token:
        fig = Figure(figsize=ATTENTION_INCHES)
        ax_image, ax_map = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        ax_image.imshow(image)
        ax_image.set_title("image", fontsize=10)
        ax_map.imshow(overlay(image, heatmap))
        ax_map.set_title("Grad-CAM", fontsize=10)
        for ax in (ax_image, ax_map):
            ax.set_xticks([])
            ax.set_yticks([])
        scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
        fig.colorbar(scale, ax=ax_map, fraction=0.046, pad=0.03)
        fig.suptitle(title, fontsize=10)
        fig.subplots_adjust(left=0.02, right=0.95, top=0.82, bottom=0.03, wspace=0.05)
        return _save(fig, output)
    ids = processor.tokenizer(question, truncation=True)["input_ids"]
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    panels = [("image", image)] + [(token, overlay(image, m)) for token, m in zip(tokens, heatmap, strict=True)]
    columns = min(5, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(TOKEN_CELL_INCHES[0] * columns, TOKEN_CELL_INCHES[1] * rows + 0.8))
    for k, (name, picture) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.75 / fig.get_size_inches()[1], bottom=0.02, hspace=0.25)
    return _save(fig, output)


# ---------------------------------------------------------------------------------------------------------
# Pointing game
# ---------------------------------------------------------------------------------------------------------


def _lesion_mask(boxes: Iterable[Mapping[str, Any]], size: tuple[int, int], pad: float) -> np.ndarray:
    """Pixels (by their centres) inside any box dilated by `pad` pixels; boxes use pixel-edge coordinates."""
    width, height = size
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    mask = np.zeros((height, width), dtype=bool)
    for b in boxes:
        inside_x = (xs >= b["x0"] - pad) & (xs <= b["x1"] + pad)
        inside_y = (ys >= b["y0"] - pad) & (ys <= b["y1"] + pad)
        mask |= inside_y[:, None] & inside_x[None, :]
    return mask


def _fov_mask(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    radius = FOV_RADIUS_FRACTION * min(width, height)
    return (xx - width / 2) ** 2 + (yy - height / 2) ** 2 <= radius**2


def pointing_game(
    model: Any,
    processor: Any,
    dataset: Any,
    max_examples: int | None = 200,
    tolerance: float = 0.02,
    layer: int = -1,
    image_column: str = "image",
    question_column: str = "question",
) -> dict[str, Any]:
    """Pointing-game hit rates of Grad-CAM maps on lesion-presence questions about images with that lesion.

    A row counts when its ``question_type`` is one of :data:`PRESENCE_LESION_TYPES` and its ``lesions`` hold
    at least one box of that kind (the first `max_examples` such rows are used). The map is upsampled to the
    image's pixels; a hit is its maximum falling inside a box of the asked kind dilated by
    ``tolerance * max(width, height)`` pixels. Baselines on the same rows: ``random``, the exact chance that a
    uniformly random pixel of the circular field of view is a hit, and ``centre``, whether the image centre
    is a hit.

    Returns ``{"overall": {...}, "by_question_type": {type: {...}}, "tolerance", "layer"}`` where each
    ``{...}`` is ``{"count", "model", "random", "centre", "answered_yes"}`` (rates in [0, 1]; ``answered_yes``
    is the share of these rows, all with answer "yes", that the model answered "yes").
    """
    meta = dataset.select_columns(["question_type", "lesions"]).to_dict()
    rows = []
    for i, (question_type, lesions) in enumerate(zip(meta["question_type"], meta["lesions"], strict=True)):
        kinds = PRESENCE_LESION_TYPES.get(question_type)
        if kinds and any(b["type"] in kinds for b in lesions or []):
            rows.append(i)
    if max_examples is not None:
        rows = rows[:max_examples]
    scores: dict[str, list[tuple[float, float, float, float]]] = {}
    for i in rows:
        example = dataset[i]
        image = load_image(example[image_column], where=f"row {i}")
        question_type = example["question_type"]
        boxes = [b for b in example["lesions"] if b["type"] in PRESENCE_LESION_TYPES[question_type]]
        heatmap, answer = gradcam_map(model, processor, image, example[question_column], layer=layer)
        size = image.size
        hits = _lesion_mask(boxes, size, tolerance * max(size))
        y, x = np.unravel_index(int(np.argmax(upsample(heatmap, size))), hits.shape)
        fov = _fov_mask(size)
        model_hit = float(hits[y, x])
        random_hit = float((hits & fov).sum() / max(1, fov.sum()))
        centre_hit = float(hits[min(size[1] // 2, size[1] - 1), min(size[0] // 2, size[0] - 1)])
        yes = float(answer.strip().lower() == "yes")
        scores.setdefault(question_type, []).append((model_hit, random_hit, centre_hit, yes))

    def summary(values: list[tuple[float, float, float, float]]) -> dict[str, float | int]:
        array = np.array(values, dtype=float).reshape(-1, 4)
        means = array.mean(axis=0) if len(array) else [float("nan")] * 4
        return {
            "count": len(array),
            **{k: float(v) for k, v in zip(("model", "random", "centre", "answered_yes"), means, strict=True)},
        }

    everything = [v for values in scores.values() for v in values]
    return {
        "overall": summary(everything),
        "by_question_type": {qt: summary(scores[qt]) for qt in PRESENCE_LESION_TYPES if qt in scores},
        "tolerance": tolerance,
        "layer": layer,
    }


def format_pointing(result: Mapping[str, Any]) -> str:
    """The pointing-game result as a plain-text table."""
    header = f"{'question type':<22}{'n':>6}{'model':>9}{'random':>9}{'centre':>9}{'ans yes':>9}"
    lines = [header, "-" * len(header)]
    entries = list(result["by_question_type"].items()) + [("overall", result["overall"])]
    for name, s in entries:
        lines.append(
            f"{name:<22}{s['count']:>6}{s['model']:>9.3f}{s['random']:>9.3f}{s['centre']:>9.3f}{s['answered_yes']:>9.3f}"
        )
    lines.append(f"(hit = map maximum within {result['tolerance']:g} x image size of a lesion of the asked kind)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retina_vqa.visualize", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    samples = commands.add_parser("samples", help="grid of random predictions, right in green, wrong in red")
    samples.add_argument("--predictions", required=True, help="predictions.jsonl of a --do_predict run")
    samples.add_argument("--dataset_dir", required=True, help="the save_to_disk folder that was predicted")
    samples.add_argument("--split", default="test")
    samples.add_argument("--image_column", default="image")
    samples.add_argument("--output", required=True)
    samples.add_argument("--num", type=int, default=16)
    samples.add_argument("--seed", type=int, default=0)

    curves = commands.add_parser("curves", help="loss and eval metrics vs step")
    curves.add_argument("--trainer_state", required=True)
    curves.add_argument("--output", required=True)

    confusion = commands.add_parser("confusion", help="diagnosis confusion matrix")
    confusion.add_argument("--predictions", required=True)
    confusion.add_argument("--question_type", default="diagnosis")
    confusion.add_argument("--output", required=True)

    attention = commands.add_parser("attention", help="Grad-CAM of the question encoder's cross-attention")
    attention.add_argument("--model_name_or_path", required=True)
    attention.add_argument("--image", required=True)
    attention.add_argument("--question", required=True)
    attention.add_argument("--output", required=True)
    attention.add_argument("--layer", type=int, default=-1)
    attention.add_argument("--per_token", action="store_true")

    pointing = commands.add_parser("pointing", help="pointing-game hit rates on lesion-presence questions")
    pointing.add_argument("--model_name_or_path", required=True)
    pointing.add_argument("--dataset_dir", required=True)
    pointing.add_argument("--split", default="test")
    pointing.add_argument("--max_examples", type=int, default=200)
    pointing.add_argument("--tolerance", type=float, default=0.02)
    pointing.add_argument("--layer", type=int, default=-1)
    pointing.add_argument("--output_json", default=None)
    return parser


def main(argv: list[str] | None = None) -> Any:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ImageLoadError, OSError, ValueError, KeyError) as error:
        # Bad paths, unreadable images, wrong columns: one line naming the problem, no traceback.
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


def _run(args: argparse.Namespace) -> Any:
    if args.command == "samples":
        dataset = _load_split(args.dataset_dir, args.split)
        records = read_jsonl(args.predictions)
        size = plot_samples(records, dataset, args.output, args.num, args.seed, args.image_column)
    elif args.command == "curves":
        size = plot_curves(json.loads(Path(args.trainer_state).read_text()), args.output)
    elif args.command == "confusion":
        size = plot_confusion(read_jsonl(args.predictions), args.output, args.question_type)
    elif args.command == "attention":
        model, processor = load_model_and_processor(args.model_name_or_path)
        size = plot_attention(model, processor, args.image, args.question, args.output, args.layer, args.per_token)
    else:
        model, processor = load_model_and_processor(args.model_name_or_path)
        dataset = _load_split(args.dataset_dir, args.split)
        result = pointing_game(model, processor, dataset, args.max_examples, args.tolerance, args.layer)
        print(format_pointing(result))
        if args.output_json:
            Path(args.output_json).write_text(json.dumps(result, indent=2) + "\n")
        return result
    print(f"wrote {args.output} ({size[0]}x{size[1]} px)")
    return size


if __name__ == "__main__":
    main()
