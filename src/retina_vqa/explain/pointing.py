"""The pointing game: is a Grad-CAM map's maximum on a lesion of the kind a presence question asks about?

The model's map is compared with two maps that know nothing on the same rows: a uniformly random location
inside the circular field of view (computed exactly as the share of field-of-view pixels on a lesion box)
and the image centre. A model that grounds its answers beats both.

This module owns `pointing_game` (the hit rates), `format_pointing` (their table, as
``python -m retina_vqa.visualize pointing`` prints it) and the pixel masks they are counted on: the lesion
boxes of the asked kind and the field of view of the synthetic images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..data.images import load_image
from ..questions import PRESENCE_TYPES
from ..synthetic.render import FOV_RADIUS_FRACTION
from .gradcam import gradcam_map, upsample

__all__ = ["PRESENCE_LESION_TYPES", "format_pointing", "pointing_game"]

# Lesion-presence question type -> lesion types that make its answer "yes" (as in the synthetic data).
PRESENCE_LESION_TYPES: dict[str, tuple[str, ...]] = dict(PRESENCE_TYPES)


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
    """Pixels (by their centres) inside the synthetic images' circular field of view."""
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

    The model is any of the three families (`gradcam_map` dispatches: BLIP's question-encoder
    cross-attention, the Q-Former's for BLIP-2 / InstructBLIP, whose prompt is the one saved with the model);
    `layer` indexes the layers that cross-attend to the image (`gradcam.cross_attention_layers`).

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
