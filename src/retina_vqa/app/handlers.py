"""What the web app's buttons run: the loaded model behind a lock, and one function per event.

`Answerer` owns the model: it answers (ranked over the model's known answers where it has them, else generated,
through `retina_vqa.inference.answer_questions`), draws the Grad-CAM overlay (`retina_vqa.explain`), lists the
questions the model knows and writes the screening report. One lock serialises every model call: the model and
the attention switch Grad-CAM makes are not thread-safe, and the page's queue is a second guard, not the only one.

The ``on_*`` functions are the event handlers the layout wires (`retina_vqa.app.layout`): plain Python values in,
plain values out (file paths, strings, dicts, row lists), so they run and are tested without a browser. Every
problem a user can cause (no upload, a broken, huge or non-image file, an empty question) comes back as a line in
the page's message box, never as a traceback; an unexpected failure is logged with its traceback on the server
and named in one line in the page.

Photographs over `MAX_IMAGE_PIXELS` (width x height; ``Answerer(max_image_pixels=...)``, ``--max_image_pixels``)
are refused from their header, before their pixels are decoded, with a message naming their size, the limit and
what to do. Pillow's own guard (``PIL.Image.MAX_IMAGE_PIXELS``) is left as it is for the rest of the process.

Each screening report is a JSON file in a folder of its own under the answerer's report folder. The newest
`REPORTS_KEPT` are kept (for a caller that reads the returned path a while later); writing another deletes the
oldest, and the whole report folder goes when the answerer is closed, garbage-collected or the process exits. The
page's download link is Gradio's own copy in its cache, which the page's cache cleanup deletes
(`retina_vqa.app.layout.CACHE_CLEANUP`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..answering.candidates import normalize_question
from ..data.images import ImageLoadError, load_image
from ..inference import (
    DEFAULT_MAX_IMAGE_SIDE,
    AnswerCandidates,
    answer_questions,
    generation_kwargs,
    load_answer_candidates,
    load_for_inference,
)
from ..metrics.screening import OperatingPoint, find_operating_points
from ..ood import find_ood_guard, ood_warning  # out-of-distribution guard
from ..questions import QUESTION_TYPES

__all__ = ["MAX_IMAGE_PIXELS", "REPORTS_KEPT", "Answer", "Answerer", "catalogue_question_type", "display_size"]

logger = logging.getLogger(__name__)

# Longer questions are refused: the tokenizer would cut them at the trained question length anyway, and a
# megabyte of text in a request is a mistake or abuse.
MAX_QUESTION_CHARS = 500
# Batch uploads answered at once; more is a job for `python -m retina_vqa.predict --data_file`.
MAX_BATCH_IMAGES = 32
# Longer side of the pictures the page shows: a 128 px fundus would be a stamp, a 4000 px one a slow download.
DISPLAY_SIDE = 512
# Largest decoded photograph, width x height: fundus cameras give up to ~24 MP, and 50 MP still takes a full-frame
# camera back; a 50 MP RGB image is 150 MB decoded before it is downsized to DEFAULT_MAX_IMAGE_SIDE. Pillow's own
# guard lets ~179 MP through (with a warning above ~89 MP).
MAX_IMAGE_PIXELS = 50_000_000
# Screening reports kept on disk per answerer: a few users' worth, for callers reading the returned path; each is
# a few kB, and the page serves Gradio's cached copy anyway.
REPORTS_KEPT = 16


def catalogue_question_type(question: str) -> str | None:
    """The question type whose wording (canonical or paraphrase) is `question`, in the catalogue
    (`retina_vqa.questions`); None for any other text."""
    text = question.strip().lower()
    for name, spec in QUESTION_TYPES.items():
        if text in spec["paraphrases"]:
            return name
    return None


@dataclass
class Answer:
    """One answer as the page shows it: ``answer_scores`` holds the candidate probabilities of a ranked
    answer (high to low), None for a generated one."""

    question: str
    answer: str
    answer_scores: dict[str, float] | None = None
    question_type: str | None = None
    referral: dict[str, Any] | None = None  # ranked diagnosis: P(referable) and the call at each operating point
    # "ungradable: re-image" on the grading answers of an image the model calls ungradable (quality "no"), instead
    # of a referral; None otherwise.
    screening: str | None = None
    # Out-of-distribution guard saved with the model: {"score", "threshold", "flagged"} of the image, else None.
    out_of_distribution: dict[str, Any] | None = None

    @property
    def probability(self) -> float | None:
        """The probability of the chosen answer among the candidates; None when generated."""
        if not self.answer_scores:
            return None
        return self.answer_scores.get(self.answer)


class Answerer:
    """A loaded model answering for the page: answers, Grad-CAM overlays, known questions, reports.

    Args:
        model, processor: as `retina_vqa.inference.load_for_inference` returns them.
        candidates: the model's saved answer candidates (`retina_vqa.inference.load_answer_candidates`), or None:
            then every answer is generated.
        name: how the page names the model (its folder or hub id).
        wordings: the question wordings the model was trained on, ``{question: question_type}`` (saved with its
            answer candidates); default: those of `candidates`.
        max_image_pixels: the largest photograph accepted, width x height (default `MAX_IMAGE_PIXELS`).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        candidates: AnswerCandidates | None = None,
        name: str = "",
        wordings: dict[str, str] | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        operating_points: Sequence[OperatingPoint] | None = None,
    ) -> None:
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be a positive number of pixels, got {max_image_pixels}.")
        self.model = model
        self.processor = processor
        self.candidates = candidates
        self.name = name
        if wordings is None:
            wordings = candidates.questions if candidates is not None else {}
        self.wordings = {normalize_question(q): t for q, t in wordings.items()}
        self.max_image_pixels = max_image_pixels
        self.operating_points = list(operating_points or [])
        self.lock = threading.Lock()
        self.report_dir = Path(tempfile.mkdtemp(prefix="retina-vqa-reports-"))
        self._reports: deque[Path] = deque()  # this answerer's report folders, oldest first
        self._reports_lock = threading.Lock()
        # Removes the report folder when the answerer is closed or collected, or at the latest when Python exits.
        self._remove_reports = weakref.finalize(self, shutil.rmtree, self.report_dir, ignore_errors=True)

    @classmethod
    def load(
        cls,
        model_name_or_path: str | os.PathLike,
        device: str | None = None,
        answer_list: str | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> Answerer:
        """Load a saved model (a folder written by run_vqa.py, or a hub id) with its answer candidates, or with those
        of `answer_list` (a JSON file, as ``python -m retina_vqa.predict --answer_list`` reads it)."""
        model, processor = load_for_inference(model_name_or_path, device=device)
        find_ood_guard(model)  # a broken or mismatched out-of-distribution guard is named at start, not per answer
        saved = load_answer_candidates(model_name_or_path)
        candidates = AnswerCandidates.from_file(answer_list, base=saved) if answer_list else saved
        # The questions to offer are the model's, whatever lists its answers are ranked against.
        wordings = saved.questions if saved is not None else None
        return cls(
            model,
            processor,
            candidates,
            name=os.fspath(model_name_or_path),
            wordings=wordings,
            max_image_pixels=max_image_pixels,
            operating_points=find_operating_points(model_name_or_path),
        )

    def close(self) -> None:
        """Delete the report folder and every report in it (also done when the answerer is collected or Python
        exits)."""
        self._remove_reports()

    # ------------------------------------------------------------------------------------------------
    # Model calls
    # ------------------------------------------------------------------------------------------------

    @property
    def answer_mode(self) -> str:
        """``auto`` (rank the question types with known answers, generate the rest) when the model has answer
        candidates, else ``generate``."""
        return "auto" if self.candidates is not None else "generate"

    def known_questions(self) -> list[str]:
        """One question per type the model knows, in the catalogue's order (`retina_vqa.questions`).

        With saved training wordings (`wordings`), their types, each asked in the catalogue's wording when the model
        was trained on it, else in its first saved wording; without them, every type of the catalogue in its
        canonical wording.
        """
        catalogue = {name: spec["question"] for name, spec in QUESTION_TYPES.items()}
        if not self.wordings:
            return list(catalogue.values())
        first_wording: dict[str, str] = {}
        for question, question_type in self.wordings.items():
            first_wording.setdefault(question_type, question)
        order = [t for t in catalogue if t in first_wording] + [t for t in first_wording if t not in catalogue]
        trained = {t: catalogue[t] for t in order if self.wordings.get(normalize_question(catalogue.get(t))) == t}
        return [trained.get(t, first_wording[t]) for t in order]

    def question_type(self, question: str) -> str | None:
        """The type of `question`: as the model's candidates or training wordings map it, else as the catalogue
        does."""
        mapped = self.candidates.question_type(question) if self.candidates is not None else None
        return mapped or self.wordings.get(normalize_question(question)) or catalogue_question_type(question)

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[Answer]:
        """``questions[i]`` about ``images[i]`` (RGB, already loaded), batched; answers as
        `retina_vqa.inference.answer_questions` gives them for the same images and questions."""
        with self.lock:
            records = answer_questions(
                self.model,
                self.processor,
                list(images),
                list(questions),
                answer_mode=self.answer_mode,
                answer_candidates=self.candidates,
                return_scores=True,
                operating_points=self.operating_points,
            )
        return [
            Answer(
                question=record["question"],
                answer=record["answer"],
                answer_scores=record.get("answer_scores"),
                question_type=record.get("question_type") or self.question_type(record["question"]),
                referral=record.get("referral"),
                screening=record.get("screening"),
                out_of_distribution=record.get("out_of_distribution"),
            )
            for record in records
        ]

    def overlay(self, image: Image.Image, question: str, answer: str | None = None) -> tuple[Image.Image, str]:
        """The Grad-CAM overlay of `question` about `image` (`retina_vqa.explain`) for `answer` (default: the
        decoder's own generated answer), and the answer the map explains."""
        from ..explain import gradcam_map, overlay

        settings = generation_kwargs(self.model, None, None)
        with self.lock:
            heatmap, explained = gradcam_map(
                self.model,
                self.processor,
                image,
                question,
                max_new_tokens=settings["max_new_tokens"],
                generate_kwargs={"num_beams": settings["num_beams"], "max_length": None},
                answer=answer,
            )
        # The map is upsampled to the picture it is drawn on: drawn on the display-sized fundus, it stays smooth.
        return overlay(display_size(image), heatmap), explained

    def write_report(self, image_name: str, answers: Sequence[Answer]) -> Path:
        """The screening report as JSON (model, image, every answer with its candidate probabilities); the path.

        The file stays until `REPORTS_KEPT` newer reports are written or the answerer is closed."""
        stem = Path(image_name).stem or "image"
        report = {"model": self.name, "image": image_name, "answers": [asdict(answer) for answer in answers]}
        with self._reports_lock:
            # A folder per report keeps the user's file name without two reports on the same image colliding.
            folder = Path(tempfile.mkdtemp(dir=self.report_dir))
            self._reports.append(folder)
            while len(self._reports) > REPORTS_KEPT:
                shutil.rmtree(self._reports.popleft(), ignore_errors=True)
            path = folder / f"screening-report-{stem}.json"
            path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return path

    # ------------------------------------------------------------------------------------------------
    # Event handlers: the page's inputs in, the page's outputs out, problems as a message
    # ------------------------------------------------------------------------------------------------

    def on_upload(self, path: str | None) -> tuple[Image.Image | None, str]:
        """A file was uploaded: ``(the picture the model sees (EXIF orientation applied, RGB), message)``."""
        if not path:
            return None, ""
        try:
            image = _load(path, self.max_image_pixels)
        except ImageLoadError as error:
            return None, str(error)
        return display_size(image), f"Loaded {Path(path).name} ({image.width}x{image.height} px)."

    def on_ask(
        self, path: str | None, choice: str | None, typed: str | None
    ) -> tuple[str, dict[str, float] | None, Image.Image | None, str]:
        """Ask: ``(answer, candidate probabilities or None, Grad-CAM overlay, message)``."""
        try:
            question = _question(choice, typed)
            image = _load(_need_upload(path), self.max_image_pixels)
        except (ImageLoadError, ValueError) as error:
            return "", None, None, str(error)
        try:
            (answer,) = self.answer([image], [question])
            picture, explained = self.overlay(image, question, answer.answer)
        except Exception as error:  # the server stays up and the page says what failed; the log has the traceback
            logger.exception("answering %r failed", question)
            return "", None, None, f"Could not answer: {type(error).__name__}: {error}"
        if answer.answer_scores is not None:
            count = len(answer.answer_scores)
            how = f"Ranked over {count} known answer{'s' * (count != 1)}; P = {_percent(answer.probability)}."
        else:
            how = "Generated (free text): this question has no known answer list, so no probabilities."
        note = "" if explained == answer.answer else f" The map explains {explained!r}."
        message = f"{_ood_text([answer])}Q: {question}  {how}{note}{_referral_text(answer)}"
        return answer.answer, answer.answer_scores, picture, message

    def on_report(self, path: str | None) -> tuple[list[list[Any]], str | None, str]:
        """Screening report: every known question about the image: ``(table rows, JSON path, message)``."""
        try:
            image = _load(_need_upload(path), self.max_image_pixels)
        except (ImageLoadError, ValueError) as error:
            return [], None, str(error)
        try:
            questions = self.known_questions()
            answers = self.answer([image] * len(questions), questions)
            report = self.write_report(Path(path).name, answers)
        except Exception as error:
            logger.exception("screening report failed")
            return [], None, f"Could not write the report: {type(error).__name__}: {error}"
        rows = [[a.question_type or "", a.question, a.answer, _percent(a.probability)] for a in answers]
        # One screening line: the referral of the diagnosis answer, or "ungradable: re-image" (said once).
        referral = "".join(dict.fromkeys(_referral_text(a) for a in answers if a.referral or a.screening))
        message = f"{_ood_text(answers)}Screening report: {len(answers)} questions about {Path(path).name}.{referral}"
        return rows, str(report), message

    def on_batch(
        self, paths: Sequence[str] | str | None, choice: str | None, typed: str | None
    ) -> tuple[list[list[Any]], str]:
        """One question about several images: ``(rows of image name, question, answer, probability, message)``;
        unreadable files are listed in the message, the others answered; the message names each image the
        out-of-distribution guard flags, with its warning, as the single-image tab does."""
        paths = [paths] if isinstance(paths, str) else list(paths or [])
        try:
            question = _question(choice, typed)
            if not paths:
                raise ValueError("Upload one or more fundus photographs first.")
            if len(paths) > MAX_BATCH_IMAGES:
                raise ValueError(
                    f"{len(paths)} images: the page answers at most {MAX_BATCH_IMAGES} at once; for more use "
                    "`python -m retina_vqa.predict --data_file FOLDER`."
                )
        except ValueError as error:
            return [], str(error)
        names, images, problems = [], [], []
        for path in paths:
            try:
                images.append(_load(path, self.max_image_pixels))
                names.append(Path(path).name)
            except ImageLoadError as error:
                problems.append(str(error))
        try:
            answers = self.answer(images, [question] * len(images)) if images else []
        except Exception as error:
            logger.exception("batch answering failed")
            return [], f"Could not answer: {type(error).__name__}: {error}"
        rows = [[name, a.question, a.answer, _percent(a.probability)] for name, a in zip(names, answers, strict=True)]
        message = f"Answered {len(rows)} of {len(paths)} images."
        # The out-of-distribution guard's warning of each flagged image, by name.
        flagged = [
            f"{name}: {_ood_text([a]).strip()}" for name, a in zip(names, answers, strict=True) if _ood_text([a])
        ]
        if flagged:
            message += " " + " ".join(flagged)
        if problems:
            message += " Skipped: " + " ".join(problems)
        return rows, message


def _ood_text(answers: Sequence[Answer]) -> str:
    """The out-of-distribution warning that starts the message when the guard flagged the image, else ""."""
    check = answers[0].out_of_distribution if answers else None
    return f"{ood_warning(check)} " if check is not None and check["flagged"] else ""


def _referral_text(answer: Answer) -> str:
    """The referral of a ranked diagnosis answer at the model's operating points, as the page says it; for an image
    the model calls ungradable, its screening outcome ("ungradable: re-image") instead."""
    if answer.screening:
        return f" Screening: {answer.screening}."
    if not answer.referral:
        return ""
    calls = "; ".join(
        f"{name.replace('_', ' ')} point: {call}" for name, call in answer.referral.items() if name != "p_referable"
    )
    return f" Referral (P(referable) {_percent(answer.referral['p_referable'])}): {calls}."


def display_size(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """`image` scaled (up or down) to a longer side of `side` pixels, for the page."""
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def _load(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The upload at `path` as answer_questions loads a path: EXIF orientation applied, RGB, very large
    photographs downsized; refused over `max_pixels` (width x height). Read as bytes so that messages name the user's
    file, not the server's upload folder."""
    name = Path(path).name
    try:
        data = Path(path).read_bytes()
    except OSError as error:  # gone from the upload folder (cleaned up, or a stale page)
        raise ImageLoadError(f"the upload {name!r}", f"the file cannot be read ({error})", "Upload it again.") from None
    _check_pixels(data, f"the upload {name!r}", max_pixels)
    try:
        return load_image(data, where=f"the upload {name!r}", max_side=DEFAULT_MAX_IMAGE_SIDE)
    except ImageLoadError as error:
        # Pillow names the in-memory buffer ("<_io.BytesIO object at 0x...>"): name the file instead.
        error.args = (re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", repr(name), str(error)),)
        raise


def _check_pixels(data: bytes, where: str, max_pixels: int) -> None:
    """Refuse an image of more than `max_pixels` from its header, before any pixel is decoded. Data Pillow cannot
    identify passes: `load_image` says what is wrong with it."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        pixels, limit = width * height, max_pixels
        size = f"is {width}x{height} px ({pixels:,} pixels)"
    except Image.DecompressionBombError as error:
        # Over twice PIL.Image.MAX_IMAGE_PIXELS Pillow refuses to open it at all; its message has the pixel count.
        count = re.search(r"\((\d+) pixels\)", str(error))
        limit = min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)
        pixels = int(count[1]) if count else limit + 1
        size = f"has {pixels:,} pixels" if count else f"has over {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
    except Exception:  # not an image Pillow can identify
        return
    if pixels > limit:
        raise_it = (
            "the server's --max_image_pixels (env RETINA_VQA_MAX_IMAGE_PIXELS) raises the limit"
            if limit == max_pixels
            else "this limit is Pillow's (PIL.Image.MAX_IMAGE_PIXELS in the server process)"
        )
        raise ImageLoadError(
            where,
            f"the image {size}, over the limit of {limit:,} pixels ({limit / 1e6:g} megapixels)",
            f"Resize it to at most {limit / 1e6:g} megapixels (a fundus photograph needs no more than about 24) and "
            f"upload it again; {raise_it}.",
        )


def _need_upload(path: str | None) -> str:
    if not path:
        raise ValueError("Upload a fundus photograph first.")
    return path


def _question(choice: str | None, typed: str | None) -> str:
    """The typed question if there is one, else the chosen known question."""
    question = (typed or "").strip() or (choice or "").strip()
    if not question:
        raise ValueError("Pick a question from the list or type one.")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question has {len(question)} characters; ask in at most {MAX_QUESTION_CHARS}.")
    return question


def _percent(probability: float | None) -> str:
    return "" if probability is None else f"{probability:.1%}"
