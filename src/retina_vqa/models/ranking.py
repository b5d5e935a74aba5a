"""Ranked answers: the candidate answers of a question scored by the model's likelihood, instead of generated.

Generation can answer anything ("yes" to "what is the diagnosis?"); ranking picks one of the answers the question
has (BLIP's own VQA evaluation, salesforce/BLIP ``rank_answer``), and gives every candidate a probability. This
module owns

* the candidate lists (`AnswerCandidates`): per question type, from the training split (types whose answers form
  a small set) or from a file (``--answer_list``), with the question wordings that map a question to its type and
  the temperatures fitted by ``--calibrate``; saved with a model as ``answer_candidates.json``;
* the scoring (`score_candidates`): a candidate's score is the sum of the log-likelihoods of its tokens, end token
  included, under the model (no label smoothing: plain ``log_softmax`` of the logits). The image and the question
  are encoded once; all candidates of a question go through one batched decoder pass that repeats the question's
  states (BLIP: the question encoder's output; BLIP-2 with T5: the encoder's output; BLIP-2 / InstructBLIP with a
  decoder-only language model: the prompt's key/value cache), never the image encoding. Where a list is longer
  than ``top_k`` (BLIP's k = 128), only the ``top_k`` candidates whose first token is most likely are scored in
  full, the rest get ``-inf`` (probability 0), as BLIP does;
* the plan an evaluation ranks with (`RankingPlan`).

Probabilities are ``softmax(score / T)`` over a question's candidates (`metrics.calibration.probabilities`).

The three prefixes (`BlipPrefix`, `EncoderDecoderPrefix`, `DecoderOnlyPrefix`) hold a batch of encoded questions;
`blip_prefix` and `prompt_prefix` build them from model inputs as answering and evaluation batch them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from ..metrics.calibration import RankedAnswerMetrics, probabilities
from ..metrics.normalize import normalize_answer
from .blip import decode_answers, encode_images, encode_questions
from .blip2 import PromptLayout, check_image_tokens, qformer_inputs

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_QUESTIONS",
    "ANSWER_MODES",
    "ANSWER_SET_COLUMN",
    "CANDIDATES_FILE",
    "AnswerCandidates",
    "BlipPrefix",
    "DecoderOnlyPrefix",
    "EncoderDecoderPrefix",
    "RankingPlan",
    "TokenizedCandidates",
    "WithAnswerSets",
    "blip_prefix",
    "candidates_for_run",
    "load_answer_candidates",
    "prompt_prefix",
    "score_candidates",
    "tokenize_candidates",
]

ANSWER_MODES = ("generate", "rank", "auto")
CANDIDATES_FILE = "answer_candidates.json"
# The column (and batch key) holding an evaluated row's candidate list index, -1 for generated rows.
ANSWER_SET_COLUMN = "answer_set"
# The type of a flat --answer_list: one list for every question.
ALL_QUESTIONS = "*"
# BLIP's k_test: longer lists are pre-selected by the first token's probability.
DEFAULT_TOP_K = 128
# A question type whose training answers form a set at most this large gets a candidate list.
DEFAULT_MAX_CANDIDATES = 20
# Question-candidate pairs per decoder pass (memory: pairs x answer length x vocabulary logits).
DEFAULT_MAX_PAIRS = 256
# As in metrics.vqa: without an answer_type column, a type is closed when all its answers are this short.
_CLOSED_MAX_TOKENS = 3


def normalize_question(question: str) -> str:
    """The form in which question wordings are compared: lower case, single spaces."""
    return " ".join(str(question or "").lower().split())


# ---------------------------------------------------------------------------------------------------------
# Candidate lists
# ---------------------------------------------------------------------------------------------------------


def _first_spellings(answers: Sequence[Any]) -> tuple[str, ...]:
    """The answers in order, each kept in its first spelling, later ones equal after normalisation dropped."""
    kept: dict[str, str] = {}
    for answer in answers:
        kept.setdefault(normalize_answer(str(answer)), str(answer))
    return tuple(kept.values())


def _answer_set(answers: Sequence[Any]) -> frozenset[str]:
    """A list's answers as compared when a temperature carries over: normalised (`normalize_answer`), in any order."""
    return frozenset(normalize_answer(str(answer)) for answer in answers)


@dataclass
class AnswerCandidates:
    """The answers each question type is ranked against, how a question maps to its type, and temperatures.

    ``answers[type]`` lists the candidates (``"*"``: every question without a list of its own); ``closed[type]``
    says whether ``--answer_mode auto`` ranks the type (closed types; ``rank`` ranks every type with a list);
    ``questions`` maps known wordings (normalised, `normalize_question`) to their type; ``temperatures[type]``
    (from ``--calibrate``) divides the scores before the softmax.

    Saved as ``answer_candidates.json``::

        {"answers": {"diagnosis": ["healthy retina", "mild dr", ...], "abnormality": ["no", "yes"], ...},
         "closed": {"diagnosis": true, ...},
         "questions": {"what is the diagnosis?": "diagnosis", "how would you grade this retina?": "diagnosis", ...},
         "temperatures": {"diagnosis": 1.31, ...}}
    """

    answers: dict[str, tuple[str, ...]]
    closed: dict[str, bool] = field(default_factory=dict)
    questions: dict[str, str] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        # One spelling per answer (the first): duplicates, or spellings equal after VQA normalisation ("Yes",
        # "yes"), would split one answer's probability between dictionary keys that collapse into one.
        self.answers = {str(k): _first_spellings(v) for k, v in self.answers.items()}
        for name, answers in self.answers.items():
            if not answers:
                raise ValueError(f"The candidate list of {name!r}{self._where()} is empty: give at least one answer.")
        self.closed = {name: bool(self.closed.get(name, True)) for name in self.answers}
        self.questions = {normalize_question(q): str(t) for q, t in self.questions.items()}
        for name, temperature in self.temperatures.items():
            if not float(temperature) > 0:
                raise ValueError(f"The temperature of {name!r}{self._where()} must be positive, got {temperature}.")
        self.temperatures = {str(k): float(v) for k, v in self.temperatures.items()}

    def _where(self) -> str:
        return f" in {self.source}" if self.source else ""

    # -- what a question is ranked against -----------------------------------------------------------------

    def question_type(self, question: str) -> str | None:
        """The type of a known question wording (as in the training data), else None."""
        return self.questions.get(normalize_question(question))

    def set_for(self, question: str, question_type: str | None = None, mode: str = "auto") -> str | None:
        """The candidate list `question` is ranked against under `mode` (None: generated).

        The type is `question_type` (the dataset's column) when it has a list, else the type of the question's
        wording; ``auto`` ranks closed types only, ``rank`` every type with a list; a flat list (``"*"``)
        serves every question left without one.
        """
        if mode not in ANSWER_MODES:
            raise ValueError(f"Unknown answer mode {mode!r}; use one of {ANSWER_MODES}.")
        if mode == "generate":
            return None
        name = question_type if question_type in self.answers else self.question_type(question)
        if name in self.answers and name != ALL_QUESTIONS and (mode == "rank" or self.closed[name]):
            return name
        return ALL_QUESTIONS if ALL_QUESTIONS in self.answers else None

    def probabilities(self, name: str, scores: Sequence[float] | torch.Tensor) -> dict[str, float]:
        """``{candidate: probability}`` of list `name`, at its temperature, highest first."""
        values = scores.tolist() if isinstance(scores, torch.Tensor) else list(scores)
        probs = probabilities(values, self.temperatures.get(name, 1.0))
        pairs = sorted(zip(self.answers[name], probs.tolist(), strict=True), key=lambda pair: -pair[1])
        return dict(pairs)

    # -- building ------------------------------------------------------------------------------------------

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        question_column: str = "question",
        answer_column: str = "answer",
        question_type_column: str = "question_type",
        answer_type_column: str = "answer_type",
        max_answers: int = DEFAULT_MAX_CANDIDATES,
        source: str = "the training split",
    ) -> AnswerCandidates:
        """Candidate lists from training rows: every question type with at most `max_answers` distinct answers
        (normalised; each listed in its most frequent spelling, most frequent answer first).

        A type is closed when its ``answer_type`` is "closed" in every row (without that column: when all its
        answers have at most 3 words). Without a ``question_type`` column each question wording is its own type.
        Every wording seen in training is remembered; one seen under two types maps to neither.
        """
        if max_answers < 1:
            raise ValueError(f"max_answers must be at least 1, got {max_answers}.")
        names = getattr(dataset, "column_names", None) or list(dataset)
        for column in (question_column, answer_column):
            if column not in names:
                raise ValueError(f"No {column!r} column in {source} (columns: {names}): candidate lists need it.")
        columns = [c for c in (question_column, answer_column, question_type_column, answer_type_column) if c in names]
        data = dataset.select_columns(columns).to_dict() if hasattr(dataset, "select_columns") else dataset
        questions = [str(q or "") for q in data[question_column]]
        answers = [str(a or "").strip() for a in data[answer_column]]
        if question_type_column in data:
            types = [str(t) for t in data[question_type_column]]
        else:
            types = [normalize_question(q) for q in questions]
        kinds = data.get(answer_type_column)

        spellings: dict[str, dict[str, Counter]] = {}
        counts: dict[str, Counter] = {}
        closed: dict[str, bool] = {}
        wording_types: dict[str, set[str]] = {}
        for row, (question, answer, question_type) in enumerate(zip(questions, answers, types, strict=True)):
            wording_types.setdefault(normalize_question(question), set()).add(question_type)
            if not answer:
                continue
            key = normalize_answer(answer)
            counts.setdefault(question_type, Counter())[key] += 1
            spellings.setdefault(question_type, {}).setdefault(key, Counter())[answer] += 1
            if kinds is not None:
                is_closed = str(kinds[row]).strip().lower() == "closed"
            else:
                is_closed = len(key.split()) <= _CLOSED_MAX_TOKENS
            closed[question_type] = closed.get(question_type, True) and is_closed
        lists: dict[str, tuple[str, ...]] = {}
        for question_type, counter in counts.items():
            if len(counter) > max_answers:
                continue
            # Counter.most_common keeps first-seen order among equal counts.
            lists[question_type] = tuple(
                spellings[question_type][key].most_common(1)[0][0] for key, _ in counter.most_common()
            )
        ambiguous = sorted(w for w, t in wording_types.items() if len(t) > 1)
        if ambiguous:
            logger.warning(
                "%d question wordings occur under several question types in %s and map to none: %s",
                len(ambiguous),
                source,
                ambiguous[:5],
            )
        wordings = {w: next(iter(t)) for w, t in wording_types.items() if len(t) == 1 and next(iter(t)) in lists}
        return cls(
            answers=lists,
            closed={t: closed[t] for t in lists},
            questions=wordings,
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike, base: AnswerCandidates | None = None) -> AnswerCandidates:
        """Candidate lists from a JSON file (``--answer_list``): a flat list of answers for every question
        (``["yes", "no", ...]``), ``{question_type: [answers]}``, or a saved ``answer_candidates.json``.

        With the first two, the question wordings of `base` (the training split's, or the model's) map questions to
        types, every given list is ranked in ``auto`` mode, and the temperatures of `base` carry over to the lists
        that hold the same answers (`with_temperatures_from`).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"--answer_list {path}: no such file.") from error
        except json.JSONDecodeError as error:
            raise ValueError(f"--answer_list {path} is not valid JSON: {error}.") from error
        source = f"--answer_list {path}"
        if isinstance(data, dict) and isinstance(data.get("answers"), dict):
            return cls._from_saved(data, source)
        if isinstance(data, list):
            data = {ALL_QUESTIONS: data}
        if not isinstance(data, dict):
            raise ValueError(
                f"{source} holds a {type(data).__name__}; give a list of answers (for every question) or an object "
                '{"question_type": ["answer", ...]}.'
            )
        answers = {}
        for name, values in data.items():
            if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
                raise ValueError(
                    f"{source}: the entry {name!r} must be a list of non-empty answer strings, got {values!r}."
                )
            # The same answer twice would split its probability.
            answers[name] = tuple(dict.fromkeys(v.strip() for v in values))
        questions = {q: t for q, t in (base.questions if base else {}).items() if t in answers}
        candidates = cls(answers=answers, closed=dict.fromkeys(answers, True), questions=questions, source=source)
        return candidates.with_temperatures_from(base)

    @classmethod
    def _from_saved(cls, data: Mapping[str, Any], source: str) -> AnswerCandidates:
        for key in ("answers", "closed", "questions", "temperatures"):
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"{source}: {key!r} must be an object, got {type(data[key]).__name__}.")
        return cls(
            answers=data["answers"],
            closed=data.get("closed", {}),
            questions=data.get("questions", {}),
            temperatures=data.get("temperatures", {}),
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnswerCandidates:
        """A saved ``answer_candidates.json`` (a file, or the model folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / CANDIDATES_FILE
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("answers"), dict):
            raise ValueError(f"{path} is not an {CANDIDATES_FILE} (it needs an 'answers' object).")
        return cls._from_saved(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": {k: list(v) for k, v in self.answers.items()},
            "closed": dict(self.closed),
            "questions": dict(self.questions),
            "temperatures": dict(self.temperatures),
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``answer_candidates.json`` into `folder` (the model folder); returns its path."""
        path = Path(folder) / CANDIDATES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def with_temperatures_from(self, other: AnswerCandidates | None) -> AnswerCandidates:
        """These lists, with `other`'s temperatures for the lists the two have in common: same question type, same
        answers once normalised (`normalize_answer`), in any order (lists are ordered by training frequency, which
        another split changes). A temperature of these lists' own is kept; one of `other` that does not carry over
        is named in a warning, with the reason."""
        if other is None:
            return self
        here, there = self.source or "these lists", other.source or "the earlier lists"
        dropped = []
        for name, temperature in other.temperatures.items():
            if name in self.temperatures:
                continue
            if name not in self.answers:
                dropped.append(f"{name!r} (no such list in {here})")
                continue
            ours, theirs = _answer_set(self.answers[name]), _answer_set(other.answers.get(name, ()))
            if ours == theirs:
                self.temperatures[name] = temperature
                continue
            extras = ((here, ours - theirs), (there, theirs - ours))
            only = ", ".join(f"only in {where}: {sorted(extra)}" for where, extra in extras if extra)
            dropped.append(f"{name!r} (different answers; {only})")
        if dropped:
            logger.warning(
                "Temperatures of %s not carried over to %s: %s. A temperature holds only for the answers it was "
                "fitted on; a list without one gives probabilities at temperature 1 (run_vqa.py --calibrate fits "
                "new ones).",
                there,
                here,
                "; ".join(dropped),
            )
        return self


def load_answer_candidates(model_name_or_path: str | os.PathLike) -> AnswerCandidates | None:
    """The candidate lists saved with a model (``answer_candidates.json`` in its folder), None when it has none."""
    if not os.fspath(model_name_or_path):  # a model built in memory has no folder (Path("") would be the cwd)
        return None
    path = Path(model_name_or_path)
    if path.is_dir():
        return AnswerCandidates.load(path) if (path / CANDIDATES_FILE).exists() else None
    try:  # a hub id
        from huggingface_hub import hf_hub_download

        return AnswerCandidates.load(hf_hub_download(str(model_name_or_path), CANDIDATES_FILE))
    except Exception:  # no such file in the repository, offline, no such repository: no lists
        return None


def candidates_for_run(
    answer_list: str | None,
    train_dataset: Any,
    model_name_or_path: str | None,
    max_answers: int = DEFAULT_MAX_CANDIDATES,
    training: bool = False,
    **columns: str,
) -> AnswerCandidates | None:
    """The candidate lists of a run_vqa.py run: `answer_list` (a file) if given, else the training split's, else
    those saved with the starting model. Temperatures saved with the starting model are kept for the lists that did
    not change (the same answers, in any order; a dropped one is named in a warning), unless the run is `training`:
    then none is kept (the starting model's, or those of a saved ``answer_candidates.json`` given as `answer_list`),
    since they were fitted to other weights and the trained model would scale its probabilities by another model's
    temperature (`--calibrate` fits new ones).
    `columns`: ``question_column``, ``answer_column``, ``question_type_column``, ``answer_type_column``.
    """
    saved = None
    if model_name_or_path and os.path.isdir(model_name_or_path):
        saved = load_answer_candidates(model_name_or_path)
    trained = None
    if train_dataset is not None and columns.get("answer_column", "answer") in train_dataset.column_names:
        trained = AnswerCandidates.from_dataset(train_dataset, max_answers=max_answers, **columns)
    if answer_list is not None:
        # The base lends its question wordings only: the temperatures are settled below, once, for every source.
        base = trained or saved
        wordings = None if base is None else replace(base, temperatures={})
        candidates = AnswerCandidates.from_file(answer_list, base=wordings)
    else:
        candidates = trained or saved
    if candidates is None:
        return None
    logger.info(
        "Answer candidates from %s: %s",
        candidates.source or "the starting model",
        ", ".join(f"{name} ({len(answers)})" for name, answers in candidates.answers.items()) or "none",
    )
    if training:
        # Fitted to other weights: the starting model's, or those of the model an --answer_list file was saved with.
        stale = []
        if saved is not None and saved.temperatures:
            stale.append(f"saved with {model_name_or_path}")
        if candidates is not saved and candidates.temperatures:
            stale.append(f"in {candidates.source}")
        if stale:
            logger.warning(
                "The temperatures %s were fitted to other weights, not to the model this run trains: not carried "
                "over. Pass --calibrate to fit new ones.",
                " and ".join(stale),
            )
        candidates.temperatures = {}
        return candidates
    return candidates.with_temperatures_from(saved)


@dataclass
class WithAnswerSets:
    """A collator whose evaluation batches also carry each row's candidate list index (``answer_set``, -1 for
    generated rows), read from the dataset column of that name; everything else is the wrapped collator's."""

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        if ANSWER_SET_COLUMN in features[0]:
            batch[ANSWER_SET_COLUMN] = torch.tensor([int(f[ANSWER_SET_COLUMN]) for f in features], dtype=torch.long)
        return batch

    def __getattr__(self, name: str) -> Any:  # share_images, return_image_keys, ...: the wrapped collator's
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)


# ---------------------------------------------------------------------------------------------------------
# Candidate tokens
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedCandidates:
    """The tokens each candidate is scored on: the answer and its end token (BLIP ``[SEP]``, BLIP-2 eos),
    right-padded; ``start_ids`` precede them in what the model returns as generated ids (BLIP's ``[DEC]``)."""

    answers: tuple[str, ...]
    targets: torch.Tensor
    mask: torch.Tensor
    start_ids: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.answers)

    def output_ids(self, index: int) -> list[int]:
        """Candidate `index` as generated ids (start, answer, end), the form `generate` returns."""
        length = int(self.mask[index].sum())
        return [*self.start_ids, *self.targets[index, :length].tolist()]


def tokenize_candidates(
    answers: Sequence[str], processor: Any, layout: PromptLayout | None = None, max_target_tokens: int | None = None
) -> TokenizedCandidates:
    """Candidates tokenised as training tokenised answers: without special tokens, cut to `max_target_tokens`
    (end token included), then the end token: ``[SEP]`` for BLIP (`layout` None), eos for BLIP-2 / InstructBLIP."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if layout is None:
        end, start, pad = tokenizer.sep_token_id, (tokenizer.bos_token_id,), tokenizer.pad_token_id
    else:
        end, start, pad = layout.eos_token_id, (), layout.pad_token_id
    ids = tokenizer([str(a).strip() for a in answers], add_special_tokens=False)["input_ids"]
    room = None if max_target_tokens is None else max(0, max_target_tokens - 1)
    rows = [(row if room is None else row[:room]) + [end] for row in ids]
    width = max(len(row) for row in rows)
    targets = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        targets[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return TokenizedCandidates(tuple(answers), targets, mask, start)


# ---------------------------------------------------------------------------------------------------------
# Encoded questions: what every candidate of a question shares
# ---------------------------------------------------------------------------------------------------------


def _target_log_likelihoods(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the unmasked positions of log p(target | logits), in fp32 (no label smoothing)."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return picked.masked_fill(mask == 0, 0.0).sum(-1)


def _shifted(start_id: int, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced decoder inputs for `targets`: the start token, then every target but the last."""
    start = torch.full((targets.shape[0], 1), start_id, dtype=targets.dtype, device=targets.device)
    return torch.cat([start, targets[:, :-1]], 1), torch.cat([torch.ones_like(start), mask[:, :-1]], 1)


class BlipPrefix:
    """BLIP: the encoded questions (question encoder over the image), which the answer decoder cross-attends to."""

    def __init__(self, model: Any, question_embeds: torch.Tensor, question_mask: torch.Tensor) -> None:
        self.model, self.states, self.mask = model, question_embeds, question_mask
        self.start_id = model.decoder_start_token_id

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def device(self) -> torch.device:
        return self.states.device

    def first_token_log_probs(self, questions: torch.Tensor) -> torch.Tensor:
        start = torch.full((len(questions), 1), self.start_id, dtype=torch.long, device=self.device)
        logits = decode_answers(self.model, self.states[questions], self.mask[questions], start).logits
        return logits[:, 0].float().log_softmax(-1)

    def answer_log_likelihoods(
        self, questions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        inputs, input_mask = _shifted(self.start_id, targets, mask)
        # The question states repeated per candidate (index_select), not the image or question encoding.
        logits = decode_answers(self.model, self.states[questions], self.mask[questions], inputs, input_mask).logits
        return _target_log_likelihoods(logits, targets, mask)


class EncoderDecoderPrefix:
    """BLIP-2 with an encoder-decoder language model (Flan-T5): the encoder's output over image tokens + prompt."""

    def __init__(self, model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.lm = model.language_model
        self.states = self.lm.get_encoder()(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask
        ).last_hidden_state
        self.mask = attention_mask
        self.start_id = self.lm.config.decoder_start_token_id

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def device(self) -> torch.device:
        return self.states.device

    def _logits(self, questions: torch.Tensor, inputs: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(
            encoder_outputs=(self.states[questions],),  # as the encoder returns it
            attention_mask=self.mask[questions],
            decoder_input_ids=inputs,
            decoder_attention_mask=input_mask,
            use_cache=False,
        ).logits

    def first_token_log_probs(self, questions: torch.Tensor) -> torch.Tensor:
        start = torch.full((len(questions), 1), self.start_id, dtype=torch.long, device=self.device)
        return self._logits(questions, start, torch.ones_like(start))[:, 0].float().log_softmax(-1)

    def answer_log_likelihoods(
        self, questions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        inputs, input_mask = _shifted(self.start_id, targets, mask)
        return _target_log_likelihoods(self._logits(questions, inputs, input_mask), targets, mask)


class DecoderOnlyPrefix:
    """BLIP-2 / InstructBLIP with a decoder-only language model (OPT, Vicuna): the prompt (image tokens + text,
    left-padded) run once; its key/value cache is what the candidates continue, and its last logits give the
    first answer token's distribution."""

    def __init__(self, model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        if (attention_mask[:, -1] == 0).any():
            raise ValueError(
                "Decoder-only prompts must be padded on the left (their last position is the prompt's end)."
            )
        self.lm = model.language_model
        output = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=True)
        self.first = output.logits[:, -1].float().log_softmax(-1)
        self.cache = output.cache
        self.mask = attention_mask

    def __len__(self) -> int:
        return self.first.shape[0]

    @property
    def device(self) -> torch.device:
        return self.first.device

    def first_token_log_probs(self, questions: torch.Tensor) -> torch.Tensor:
        return self.first[questions]

    def answer_log_likelihoods(
        self, questions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        scores = self.first[questions].gather(1, targets[:, :1]).squeeze(1)
        if targets.shape[1] == 1:
            return scores
        # The prompt's keys and values, one row per candidate: a new cache (a cache grows in place as it is used).
        cache = DynamicCache(
            ddp_cache_data=[(layer.keys[questions], layer.values[questions]) for layer in self.cache.layers]
        )
        logits = self.lm(
            input_ids=targets[:, :-1],
            attention_mask=torch.cat([self.mask[questions], mask[:, :-1]], 1),
            cache=cache,
            use_cache=True,
        ).logits
        return scores + _target_log_likelihoods(logits, targets[:, 1:], mask[:, 1:])


@torch.no_grad()
def blip_prefix(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
) -> BlipPrefix:
    """Encode BLIP questions for ranking, with the conventions of `blip.generate_answers`: pixels or image-encoder
    outputs (each distinct image once, ``image_index`` per question), and the real question mask."""
    if (pixel_values is None) == (image_embeds is None):
        raise ValueError("Pass either pixel_values or image_embeds.")
    if image_embeds is None:
        image_embeds = encode_images(model, pixel_values)
    else:  # kept outputs may come from a mixed-precision pass
        image_embeds = image_embeds.to(next(model.text_encoder.parameters()).dtype)
    if image_index is not None:
        image_embeds = image_embeds.index_select(0, image_index)
    return BlipPrefix(model, encode_questions(model, image_embeds, input_ids, attention_mask), attention_mask)


@torch.no_grad()
def prompt_prefix(
    model: Any,
    layout: PromptLayout,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    qformer_input_ids: torch.Tensor | None = None,
    qformer_attention_mask: torch.Tensor | None = None,
    **_: Any,
) -> DecoderOnlyPrefix | EncoderDecoderPrefix:
    """Encode BLIP-2 / InstructBLIP prompts (``<image>`` x N + prompt; decoder-only: left-padded, as
    `blip2.prompt_only` and answering collate them) for ranking: the image features scattered into the
    placeholders, as the model's own forward does, then the prompt through the language model once."""
    check_image_tokens(input_ids, layout, "rank")
    extra = qformer_inputs(layout, qformer_input_ids, qformer_attention_mask)
    features = model.get_image_features(pixel_values=pixel_values, **extra, return_dict=True).pooler_output
    embeds = model.get_input_embeddings()(input_ids)
    placeholders = model.get_placeholder_mask(input_ids, inputs_embeds=embeds)
    embeds = embeds.masked_scatter(placeholders, features.to(embeds.device, embeds.dtype))
    if layout.decoder_only:
        return DecoderOnlyPrefix(model, embeds, attention_mask)
    return EncoderDecoderPrefix(model, embeds, attention_mask)


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def score_candidates(
    prefix: BlipPrefix | EncoderDecoderPrefix | DecoderOnlyPrefix,
    candidate_sets: Sequence[TokenizedCandidates],
    top_k: int | None = DEFAULT_TOP_K,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> list[torch.Tensor]:
    """Per question of `prefix`, the log-likelihood of each candidate of ``candidate_sets[i]`` (fp32, CPU).

    Lists longer than `top_k` are pre-selected: only the `top_k` candidates with the most likely first token are
    scored in full, the others get ``-inf``. All (question, candidate) pairs of the batch share decoder passes
    of at most `max_pairs` rows; a candidate's score does not depend on the batch (padding is masked).
    """
    if len(candidate_sets) != len(prefix):
        raise ValueError(f"{len(candidate_sets)} candidate lists for {len(prefix)} questions.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None: score every candidate), got {top_k}.")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1, got {max_pairs}.")
    device = prefix.device
    kept: list[torch.Tensor] = [torch.arange(len(s)) for s in candidate_sets]
    long_lists = [q for q, s in enumerate(candidate_sets) if top_k is not None and len(s) > top_k]
    if long_lists:
        first = prefix.first_token_log_probs(torch.tensor(long_lists, device=device)).cpu()
        for row, q in enumerate(long_lists):
            first_tokens = candidate_sets[q].targets[:, 0]
            kept[q] = first[row].index_select(0, first_tokens).topk(top_k).indices.sort().values
    pairs = [(q, int(c)) for q in range(len(candidate_sets)) for c in kept[q]]
    scores = [torch.full((len(s),), float("-inf")) for s in candidate_sets]
    for start in range(0, len(pairs), max_pairs):
        chunk = pairs[start : start + max_pairs]
        width = max(int(candidate_sets[q].mask[c].sum()) for q, c in chunk)
        targets = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (q, c) in enumerate(chunk):
            length = int(candidate_sets[q].mask[c].sum())
            targets[row, :length] = candidate_sets[q].targets[c, :length]
            mask[row, :length] = 1
        questions = torch.tensor([q for q, _ in chunk], device=device)
        values = prefix.answer_log_likelihoods(questions, targets.to(device), mask.to(device)).float().cpu()
        for (q, c), value in zip(chunk, values, strict=True):
            scores[q][c] = value
    return scores


@dataclass
class RankingPlan:
    """The candidate lists an evaluation ranks against, tokenised once: row ``i`` of an evaluated set names its
    list by index (``-1``: generated). ``width`` is the longest list: the candidate scores of every row are
    returned padded to it, so that batches and processes gather like logits."""

    names: list[str]
    sets: list[TokenizedCandidates]
    top_k: int | None = DEFAULT_TOP_K

    @classmethod
    def build(
        cls,
        candidates: AnswerCandidates,
        processor: Any,
        layout: PromptLayout | None = None,
        max_target_tokens: int | None = None,
        top_k: int | None = DEFAULT_TOP_K,
    ) -> RankingPlan:
        names = list(candidates.answers)
        sets = [tokenize_candidates(candidates.answers[n], processor, layout, max_target_tokens) for n in names]
        return cls(names, sets, top_k)

    @property
    def width(self) -> int:
        return max((len(s) for s in self.sets), default=0)

    def row_sets(
        self,
        candidates: AnswerCandidates,
        questions: Sequence[str],
        question_types: Sequence[str | None] | None,
        mode: str,
    ) -> list[int]:
        """The list index of each row (``-1``: generated) under `mode`."""
        types = question_types if question_types is not None else [None] * len(questions)
        position = {name: i for i, name in enumerate(self.names)}
        chosen = [candidates.set_for(q, t, mode) for q, t in zip(questions, types, strict=True)]
        return [-1 if name is None else position[name] for name in chosen]

    def metrics(
        self,
        compute_metrics: Callable[[Any], dict[str, float | int]] | None,
        dataset: Any,
        answer_column: str = "answer",
        question_type_column: str = "question_type",
        temperatures: Mapping[str, float] | None = None,
    ) -> RankedAnswerMetrics:
        """`compute_metrics` with the calibration numbers of the ranked rows of `dataset` (evaluation order), which
        holds the ``answer_set`` column."""
        names = dataset.column_names
        columns = [c for c in (ANSWER_SET_COLUMN, answer_column, question_type_column) if c in names]
        data = dataset.select_columns(columns).to_dict()
        return RankedAnswerMetrics(
            compute_metrics,
            self.names,
            [s.answers for s in self.sets],
            data.get(ANSWER_SET_COLUMN, [-1] * len(dataset)),
            references=data.get(answer_column),
            question_types=data.get(question_type_column),
            temperatures=temperatures,
        )

    def rank(
        self, prefix: BlipPrefix | EncoderDecoderPrefix | DecoderOnlyPrefix, row_sets: Sequence[int]
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Rank the questions of `prefix` (question i against list ``row_sets[i]``): the chosen candidates as
        generated ids, and the candidate scores padded with NaN to `width` (fp32, CPU)."""
        sets = [self.sets[s] for s in row_sets]
        scores = score_candidates(prefix, sets, self.top_k)
        padded = torch.full((len(sets), self.width), float("nan"))
        chosen = []
        for i, (candidate_set, values) in enumerate(zip(sets, scores, strict=True)):
            padded[i, : len(values)] = values
            chosen.append(candidate_set.output_ids(int(values.argmax())))
        return chosen, padded
