"""The answers a question can be ranked against: the candidate lists of each question type (`AnswerCandidates`).

Per question type, from the training split (types whose answers form a small set) or from a file
(``--answer_list``), with the question wordings that map a question to its type and the temperatures fitted by
``--calibrate``; saved with a model as ``answer_candidates.json``. `AnswerCandidates.assign` gives each row its
list (by name; None: generated) under ``--answer_mode``: every entry point asks it. The scoring of candidates by a
model lives in `models.ranking`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..metrics.calibration import probabilities
from ..metrics.normalize import normalize_answer

logger = logging.getLogger(__name__)

ANSWER_MODES = ("generate", "rank", "auto")
CANDIDATES_FILE = "answer_candidates.json"
# The column (and batch key) holding an evaluated row's candidate list index, -1 for generated rows.
ANSWER_SET_COLUMN = "answer_set"
# The type of a flat --answer_list: one list for every question.
ALL_QUESTIONS = "*"
# A question type whose training answers form a set at most this large gets a candidate list.
DEFAULT_MAX_CANDIDATES = 20
# As in metrics.vqa: without an answer_type column, a type is closed when all its answers are this short.
_CLOSED_MAX_TOKENS = 3


def normalize_question(question: str) -> str:
    """The form in which question wordings are compared: lower case, single spaces."""
    return " ".join(str(question or "").lower().split())


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

    def assign(
        self, questions: Sequence[str], question_types: Sequence[str | None] | None = None, mode: str = "auto"
    ) -> list[str | None]:
        """The list each question is ranked against under `mode`, by name (None: generated): the one place where
        rows get their lists (`set_for`), for evaluation, predict, the Python API and the app."""
        types = list(question_types) if question_types is not None else [None] * len(questions)
        if len(types) != len(questions):
            raise ValueError(f"{len(types)} question types for {len(questions)} questions.")
        return [self.set_for(question, kind, mode) for question, kind in zip(questions, types, strict=True)]

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
