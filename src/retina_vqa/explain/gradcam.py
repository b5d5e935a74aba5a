"""Grad-CAM for BLIP VQA, BLIP-2 and InstructBLIP: where on the fundus the model looked for its own answer.

Each family has one place where text meets pixels, and the map is taken there:

* BLIP VQA: the answer decoder never sees pixels: it cross-attends to the encoded question, and the question
  encoder is the only part that cross-attends to the image patches. Its rows are the question's tokens.
* BLIP-2 / InstructBLIP: the language model sees the image only through the Q-Former's outputs, and inside the
  Q-Former only the ``num_query_tokens`` learned queries cross-attend to the image patches (InstructBLIP's
  instruction tokens sit next to the queries in self-attention, never in cross-attention). Only every
  ``cross_attention_frequency``-th Q-Former layer has a cross-attention. Its rows are the queries.

The map uses that cross-attention's probabilities A (heads x rows x image tokens) in one layer and their
gradient G with respect to the log-likelihood of the model's own generated answer (teacher forced, without
label smoothing, in the layout the model trains on): ``mean over heads of A * relu(G)``, averaged over the
rows (or one map per row), without the image ``[CLS]`` token, reshaped to the patch grid and scaled to [0, 1].

This module owns `gradcam_map` (the map), `cross_attention_layers` (which layers a map can come from),
`upsample` and `overlay` (the map on the image's pixels) and `plot_attention` (the figure
``python -m retina_vqa.visualize attention`` writes). The model's steps are the ones of
`retina_vqa.models.blip` and `retina_vqa.models.blip2` (prompt, placeholders and collator of
`retina_vqa.inference`), so the map explains the model as training and answering run it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
from ..inference import prompt_batch
from ..metrics import decode_ids
from ..models.attention import attention_implementation, set_attention_implementation
from ..models.blip import decode_answers, encode_images, encode_questions, generate_answers
from ..models.blip2 import (
    DEFAULT_PROMPT_TEMPLATE,
    PromptLayout,
    generate_prompt_answers,
    model_family,
)
from ..models.compat import configured_attention
from ..plots import _save

__all__ = ["cross_attention_layers", "gradcam_map", "overlay", "plot_attention", "upsample"]

# The attention figure, in inches (width, height): image and overlay side by side, or one cell per token.
ATTENTION_INCHES = (10.0, 5.0)
TOKEN_CELL_INCHES = (2.6, 2.9)


def cross_attention_layers(model: Any) -> tuple[list[int], int]:
    """The layers a map can come from: ``(indices of the layers with an image cross-attention, layer count)``.

    BLIP: every question-encoder layer. BLIP-2 / InstructBLIP: the Q-Former layers ``i`` with
    ``i % cross_attention_frequency == 0``. The ``layer`` argument of `gradcam_map` indexes this list, so
    ``-1`` is always the last layer that looks at the image.
    """
    if model_family(model.config) == "blip":
        count = len(model.text_encoder.encoder.layer)
        return list(range(count)), count
    layers = model.qformer.encoder.layer
    return [i for i, block in enumerate(layers) if getattr(block, "has_cross_attention", False)], len(layers)


def _layer_index(model: Any, layer: int) -> int:
    """`layer` (an index into `cross_attention_layers`) -> the index of that layer in the model."""
    crossing, count = cross_attention_layers(model)
    if not -len(crossing) <= layer < len(crossing):
        numbers = ", ".join(str(i + 1) for i in crossing)
        raise ValueError(
            f"--layer {layer} is out of range: {len(crossing)} of the model's {count} layers have an image "
            f"cross-attention (layers {numbers}, counting from 1), and --layer indexes those: from 0 to "
            f"{len(crossing) - 1}, or from -1 (the last) to -{len(crossing)}."
        )
    return crossing[layer]


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


def _unit_maps(cam: torch.Tensor, grid_h: int, grid_w: int, per_token: bool) -> np.ndarray:
    """(rows, patches) evidence -> the patch-grid maps (one per row, or their mean), each scaled to [0, 1]."""
    if cam.shape[-1] != grid_h * grid_w:
        raise ValueError(f"{cam.shape[-1]} image patches do not form the {grid_h}x{grid_w} patch grid.")
    maps = cam.reshape(-1, grid_h, grid_w) if per_token else cam.mean(dim=0, keepdim=True).reshape(1, grid_h, grid_w)
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    maps = torch.where(span > 0, (maps - low) / span.clamp(min=torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))
    result = maps.cpu().numpy().astype(np.float32)
    return result if per_token else result[0]


def gradcam_map(
    model: Any,
    processor: Any,
    image: Any,
    question: str,
    layer: int = -1,
    per_token: bool = False,
    max_new_tokens: int = 20,
    interpolate_pos_encoding: bool | None = None,
    prompt_template: str | None = None,
    generate_kwargs: Mapping[str, Any] | None = None,
    answer: str | None = None,
) -> tuple[np.ndarray, str]:
    """Grad-CAM of one image cross-attention layer for the model's own answer (or for `answer`).

    Args:
        model: a `BlipForQuestionAnswering`, `Blip2ForConditionalGeneration` or
            `InstructBlipForConditionalGeneration`. The cross-attention runs eager during the map's pass (a
            BLIP also with the cross-attention mask fix), whatever the model was given with; its attention
            implementation is restored after. A BLIP-2 / InstructBLIP answers with its own attention.
        processor: its processor; images are resized by its image processor.
        image: anything :func:`retina_vqa.data.images.load_image` reads.
        question: the question text.
        layer: index into `cross_attention_layers` (BLIP: every question-encoder layer; BLIP-2: the Q-Former
            layers that have a cross-attention). Default: the last.
        per_token: one map per row of the cross-attention (BLIP: question token ``[CLS]`` ... ``[SEP]``; BLIP-2
            / InstructBLIP: learned query) instead of their mean.
        max_new_tokens: answer length limit for generation.
        interpolate_pos_encoding: default: on when the processor's image size differs from the model's.
        prompt_template: BLIP-2 / InstructBLIP: the text around the question; default: the one saved with the
            model (``config.prompt_template``), else `DEFAULT_PROMPT_TEMPLATE`. BLIP reads the question alone.
        generate_kwargs: further ``generate`` settings (``num_beams``, ``suppress_tokens``, ...). BLIP-2 /
            InstructBLIP default to the beams saved with the model, as `retina_vqa.inference` does.
        answer: explain this answer instead of generating one: e.g. the candidate a ranked answer chose
            (`retina_vqa.models.ranking`), which need not be what greedy generation says. Tokenised as training
            tokenises answers (with the end token).

    Returns:
        ``(map, answer)``: a float32 array in [0, 1] of shape ``(grid, grid)`` (or ``(rows, grid, grid)``)
        over the ViT patch grid, each map scaled by its min and max (all zeros when constant), and the
        decoded generated answer (or `answer`, as given). The model's parameters get no gradients and its
        train/eval mode is kept.

    Raises:
        ValueError: `layer` is out of range, or (BLIP-2) the processor does not match the model.
    """
    if model_family(model.config) != "blip":
        return _prompt_gradcam_map(
            model,
            processor,
            image,
            question,
            layer,
            per_token,
            max_new_tokens,
            interpolate_pos_encoding,
            prompt_template,
            dict(generate_kwargs or {}),
            answer,
        )
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
        text_config = model.config.text_config
        if answer is None:
            generated = generate_answers(
                model,
                pixel_values,
                input_ids,
                attention_mask,
                interpolate_pos_encoding=interpolate_pos_encoding,
                max_new_tokens=max_new_tokens,
                **(generate_kwargs or {}),
            )[0]
            answer_ids = _trim_answer(generated, text_config.sep_token_id)[None]
            answer = processor.tokenizer.decode(answer_ids[0], skip_special_tokens=True).strip()
        else:  # [DEC] answer [SEP], as the training targets are
            ids = processor.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
            answer_ids = torch.tensor(
                [[model.decoder_start_token_id, *ids, text_config.sep_token_id]], device=input_ids.device
            )
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
    return _unit_maps(cam, grid_h, grid_w, per_token), answer


def _prompt_gradcam_map(
    model: Any,
    processor: Any,
    image: Any,
    question: str,
    layer: int,
    per_token: bool,
    max_new_tokens: int,
    interpolate_pos_encoding: bool | None,
    prompt_template: str | None,
    generate_kwargs: dict[str, Any],
    answer: str | None = None,
) -> tuple[np.ndarray, str]:
    """`gradcam_map` for BLIP-2 / InstructBLIP: the Q-Former's query-to-patch cross-attention."""
    layout = PromptLayout.from_model(model.config, processor)
    template = prompt_template or getattr(model.config, "prompt_template", None) or DEFAULT_PROMPT_TEMPLATE
    block = model.qformer.encoder.layer[_layer_index(model, layer)]
    # The prompt, placeholders and padding of retina_vqa.inference (which answers as training evaluates); the
    # image is loaded whole, as BLIP's path loads it.
    picture = load_image(image)
    batch = prompt_batch(model, processor, [question], [picture], template, layout)
    patch = model.config.vision_config.patch_size
    height, width = batch["pixel_values"].shape[-2:]
    grid_h, grid_w = height // patch, width // patch
    if interpolate_pos_encoding is None:
        interpolate_pos_encoding = (height, width) != (model.config.vision_config.image_size,) * 2
    settings = {"num_beams": model.generation_config.num_beams or 1, **generate_kwargs}
    settings["max_new_tokens"] = max_new_tokens

    captured: list[torch.Tensor] = []

    def keep_probs(module: torch.nn.Module, args: Any, output: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        captured.append(output[1])

    def image_leaf(module: torch.nn.Module, args: Any, output: Any) -> Any:
        # A leaf that needs grad in place of the vision encoder's output: the attention probabilities get a
        # gradient even in a frozen model, and none flows on into the vision encoder's parameters.
        output["last_hidden_state"] = output["last_hidden_state"].detach().requires_grad_(True)
        return output

    was_training = model.training
    qformer = model.qformer
    implementation = configured_attention(qformer.config)
    model.eval()
    try:
        if answer is None:
            # Answered as the model is (its own attention), before the Q-Former is switched to eager below.
            generated = generate_prompt_answers(
                model, layout, **batch, interpolate_pos_encoding=interpolate_pos_encoding, **settings
            )
            answer = decode_ids(processor.tokenizer, generated.cpu())[0]
            answer_ids = generated[0]
            ends = (answer_ids == layout.eos_token_id).nonzero()
            if len(ends):  # up to and with the first eos: the answer as the training labels hold it
                answer_ids = answer_ids[: int(ends[0]) + 1]
        else:  # answer + eos, as the training labels hold it
            ids = processor.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
            answer_ids = torch.tensor([*ids, layout.eos_token_id])
        teacher = prompt_batch(model, processor, [question], [picture], template, layout, [answer_ids.tolist()])
        labels = teacher["labels"] if layout.decoder_only else teacher.pop("labels")
        # Eager only in the Q-Former and only for this pass: SDPA returns no probabilities.
        qformer.set_attn_implementation("eager")
        handles = [
            block.crossattention.attention.register_forward_hook(keep_probs),
            model.vision_model.register_forward_hook(image_leaf),
        ]
        try:
            with torch.enable_grad():
                if layout.decoder_only:
                    del teacher["labels"]  # the loss is not needed: the log-likelihood is taken below
                    logits = model(**teacher, interpolate_pos_encoding=interpolate_pos_encoding).logits
                    # Position t predicts token t + 1: only the answer and its eos are labelled.
                    logits, labels = logits[:, :-1], labels[:, 1:]
                else:
                    # T5 builds its decoder input from the labels (shifted right after its start token).
                    logits = model(**teacher, labels=labels, interpolate_pos_encoding=interpolate_pos_encoding).logits
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                targets = labels != -100
                token_log_probs = log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
                log_likelihood = token_log_probs[targets].sum()
                (probs,) = captured
                if probs is None:
                    raise RuntimeError("The Q-Former's cross-attention returned no probabilities in eager mode.")
                (grad,) = torch.autograd.grad(log_likelihood, probs)
        finally:
            for handle in handles:
                handle.remove()
            qformer.set_attn_implementation(implementation)
    finally:
        model.train(was_training)

    cam = (probs.detach().float() * grad.float().clamp(min=0)).mean(dim=1)[0]  # (queries, image tokens)
    return _unit_maps(cam[:, 1:], grid_h, grid_w, per_token), answer  # drop the image [CLS]


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
    """The fundus next to its Grad-CAM overlay (or one overlay per question token, for BLIP-2 / InstructBLIP per
    learned query), titled with Q and A.

    Returns the PNG's pixel size.
    """
    image = load_image(image)
    heatmap, answer = gradcam_map(model, processor, image, question, layer=layer, per_token=per_token)
    blip = model_family(model.config) == "blip"
    index, (_, depth) = _layer_index(model, layer), cross_attention_layers(model)
    where = f"{'text encoder' if blip else 'Q-Former'} cross-attention layer {index + 1} of {depth}"
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
    if blip:
        ids = processor.tokenizer(question, truncation=True)["input_ids"]
        tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    else:
        tokens = [f"query {k + 1}" for k in range(len(heatmap))]
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
