"""Grad-CAM for BLIP VQA: where on the fundus the model looked for its own answer, and the pictures of it.

The answer decoder never sees pixels: it cross-attends to the encoded question, and the question encoder is
the only part that cross-attends to the image patches. The map is therefore taken from the question
encoder's cross-attention probabilities A (heads x question tokens x image tokens) of one layer and their
gradient G with respect to the log-likelihood of the model's own answer (teacher forced, without label
smoothing): ``mean over heads of A * relu(G)``, averaged over the question's tokens (or one map per token),
without the image ``[CLS]`` token, reshaped to the patch grid and scaled to [0, 1].

This module owns `gradcam_map` (the map), `upsample` and `overlay` (the map on the image's pixels) and
`plot_attention` (the figure ``python -m retina_vqa.visualize attention`` writes). The model's steps are the
ones of `retina_vqa.models.blip`, so the map explains the model as training and answering run it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from ..data.images import load_image
from ..models.attention import attention_implementation, set_attention_implementation
from ..models.blip import decode_answers, encode_images, encode_questions, generate_answers
from ..plots import _save

__all__ = ["gradcam_map", "overlay", "plot_attention", "upsample"]

# The attention figure, in inches (width, height): image and overlay side by side, or one cell per token.
ATTENTION_INCHES = (10.0, 5.0)
TOKEN_CELL_INCHES = (2.6, 2.9)


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
        image: anything :func:`retina_vqa.data.images.load_image` reads.
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
            image_embeds = encode_images(model, pixel_values, interpolate_pos_encoding)
        handle = attention.register_forward_hook(keep_probs)
        try:
            with torch.enable_grad():
                # A leaf that needs grad: the attention probabilities get a gradient even in a frozen model.
                image_embeds = image_embeds.detach().requires_grad_(True)
                question_embeds = encode_questions(model, image_embeds, input_ids, attention_mask)
                logits = decode_answers(model, question_embeds, attention_mask, answer_ids, use_cache=False).logits
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
    """The fundus next to its Grad-CAM overlay (or one overlay per question token), titled with Q and A.

    Returns the PNG's pixel size.
    """
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
