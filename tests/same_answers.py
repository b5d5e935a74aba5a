"""Comparing what two computations of one model answer (fused vs eager attention, a padded batch vs one question
alone, merged weights vs an adapter, several processes vs one), up to float rounding.

The tests' random models are initialised wide so that their answers vary, and such a model amplifies float32
rounding: the same step's logits from two computations differ by up to ~1% of their scale (fused vs eager attention
on random pixels) or ~0.3% (a padded batch vs one question). Where a step's top two logits are closer than that,
another CPU (another BLAS kernel, another vector width) may choose the other token although nothing is wrong. So two
computations are compared step by step, as numbers relative to the logits' scale, for as long as they chose the same
tokens; answers seen only as text are compared where every choice was clear. A real fault is far larger: a question's
padding attended to moves the logits by ~70% of their scale.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

# How far two computations' scores may be apart, relative to the step's largest score (see the module docstring).
TOLERANCE = 0.05
# The smallest gap between a step's top two logits, relative to the largest, for a choice that rounding cannot
# flip between a padded batch and one question alone (at most ~2e-4 apart on the dataset's images).
CLEAR = 1e-3


@dataclass
class Steps:
    """One question's decoding: the tokens generated before each step (one row per beam) and the step's scores."""

    generated: list[torch.Tensor]
    scores: list[torch.Tensor]


class StepRecorder(LogitsProcessor):
    """Keeps what `generate` chose from at each step: the tokens generated so far and the scores of the next token
    (greedy search: the logits; beam search: each beam's log-probabilities). Changes nothing; pass ``**kwargs``."""

    def __init__(self) -> None:
        self.generated: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.output: Any = None  # what `generate` returned, where `recording` saw it

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = len(self.scores)  # the prompt (or [DEC]) comes first, then one token per step
        self.generated.append(input_ids[:, input_ids.shape[1] - step :].clone())
        self.scores.append(scores.detach().float().clone())
        return scores

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"logits_processor": LogitsProcessorList([self])}

    def steps(self, item: int = 0, num_beams: int = 1, answers: torch.Tensor | None = None) -> Steps:
        """Question `item`'s steps. ``answers``: the generated tokens `generate` returned (greedy search, one row
        per question, prompt cut off), so that the last step's choice is compared too."""
        rows = slice(item * num_beams, (item + 1) * num_beams)
        generated = [tokens[rows] for tokens in self.generated]
        if answers is not None:
            generated.append(answers[rows, : len(self.scores)])
        return Steps(generated, [scores[rows] for scores in self.scores])

    def smallest_margin(self, item: int = 0) -> float:
        """Greedy search: the smallest gap between a step's top two logits, relative to its largest (in |logit|)."""
        margins = []
        for scores in self.scores:
            row = scores[item][torch.isfinite(scores[item])]
            top = row.topk(2).values
            margins.append(float((top[0] - top[1]) / row.abs().max()))
        return min(margins, default=math.inf)


def agreeing_steps(reference: Steps, other: Steps, tolerance: float = TOLERANCE) -> int:
    """How many steps `other` decoded as `reference` did, asserting at each that the scores agree within `tolerance`
    of the step's largest score. They part only at a near tie: a choice between candidates this close."""
    compared = 0
    for step, (expected, got) in enumerate(zip(reference.generated, other.generated, strict=False)):
        if not torch.equal(expected, got):
            break  # the previous step chose differently; its scores agreed, so it was a near tie
        if step < min(len(reference.scores), len(other.scores)):
            want, have = reference.scores[step], other.scores[step]
            finite = torch.isfinite(want)
            assert torch.equal(finite, torch.isfinite(have)), f"step {step}: other tokens are ruled out"
            scale = want[finite].abs().max()
            gap = (want[finite] - have[finite]).abs().max()
            assert gap <= tolerance * scale, f"step {step}: scores {float(gap / scale):.2%} of their scale apart"
            compared += 1
    return compared


@contextlib.contextmanager
def recording(model: torch.nn.Module) -> Iterator[list[StepRecorder]]:
    """Records each `generate` call that answers with `model` (BLIP: its answer decoder; BLIP-2: the model itself)
    while inside, one `StepRecorder` per call (``output``: what the call returned); what is computed does not
    change."""
    target = getattr(model, "text_decoder", model)
    original = target.generate
    calls: list[StepRecorder] = []

    def generate(*args: Any, **kwargs: Any) -> Any:
        recorder = StepRecorder()
        calls.append(recorder)
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        processors.append(recorder)
        recorder.output = original(*args, logits_processor=processors, **kwargs)
        return recorder.output

    target.generate = generate
    try:
        yield calls
    finally:
        del target.generate


def answers_alone(
    model: torch.nn.Module, processor: Any, images: Sequence[Any], questions: Sequence[str], **kwargs: Any
) -> tuple[list[Any], list[float]]:
    """Each question answered alone by `retina_vqa.inference.answer_questions` (``kwargs`` go to it), and the
    smallest relative gap between the top two logits in its answer (infinite for a ranked answer: no generation)."""
    from retina_vqa.inference import answer_questions

    answers, margins = [], []
    for image, question in zip(images, questions, strict=True):
        with recording(model) as calls:
            (answer,) = answer_questions(model, processor, image, question, **kwargs)
        answers.append(answer)
        margins.append(min((call.smallest_margin() for call in calls), default=math.inf))
    return answers, margins


def assert_same_where_clear(
    got: Sequence[Any], expected: Sequence[Any], margins: Sequence[float], at_least: int, clear: float = CLEAR
) -> None:
    """`got` equals `expected` in every row whose margin (`answers_alone`) is clear, and at least `at_least` rows
    are: a row answered from another question's or image's inputs, or with its padding attended to, differs."""
    assert len(got) == len(expected) == len(margins)
    rows = [row for row, margin in enumerate(margins) if margin > clear]
    assert len(rows) >= at_least, f"only {len(rows)} rows with clear choices: {margins}"
    assert [got[row] for row in rows] == [expected[row] for row in rows]


def clear_ranking(scores: dict[str, float], tolerance: float) -> bool:
    """Whether the most likely candidate leads the next by more than twice `tolerance`: computations whose
    probabilities agree within it then rank the same candidate first."""
    top = sorted(scores.values(), reverse=True)[:2]
    return len(top) < 2 or top[0] - top[1] > 2 * tolerance
