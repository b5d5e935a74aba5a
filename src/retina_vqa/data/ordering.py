"""The order in which to answer a set of questions: each image encoded once, answers of similar length batched.

Used by evaluation in the Trainer (`--group_eval_by_question`) and by `retina_vqa.inference`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def answering_plan(
    image_keys: Sequence[Hashable], questions: Sequence[str], batch_size: int, images_per_chunk: int = 256
) -> list[tuple[list[int], list[tuple[list[int], list[int]]]]]:
    """The order in which to answer a set of questions so that each image is encoded once and each batch
    decodes answers of similar length.

    A batch decodes until its longest answer is done: a yes/no question batched with a free-text one pays
    for the long answer. Question i is about image ``image_keys[i]`` (any hashable identity: a content hash,
    a path). The distinct images are taken in order of first appearance, ``images_per_chunk`` at a time;
    within a chunk the questions are sorted by their text (the same question, or the same type, has answers
    of similar length) and cut into batches of ``batch_size``.

    Returns one ``(image_rows, batches)`` per chunk: ``image_rows[j]`` is the first row showing the chunk's
    image j (the row to load it from), and each batch is ``(rows, image_positions)`` with
    ``image_positions[k]`` the position in ``image_rows`` of the image of ``rows[k]``. Every row appears in
    exactly one batch. Answers do not depend on the order (`generate_answers` masks padding), so the caller
    puts them back by row.
    """
    if len(image_keys) != len(questions):
        raise ValueError(f"{len(image_keys)} image keys for {len(questions)} questions.")
    if batch_size < 1 or images_per_chunk < 1:
        raise ValueError(f"batch_size and images_per_chunk must be at least 1, got {batch_size}, {images_per_chunk}.")
    rows_of: dict[Hashable, list[int]] = {}
    for row, key in enumerate(image_keys):
        rows_of.setdefault(key, []).append(row)
    images = list(rows_of.values())
    plan = []
    for start in range(0, len(images), images_per_chunk):
        chunk = images[start : start + images_per_chunk]
        position = {row: j for j, rows in enumerate(chunk) for row in rows}
        rows = sorted(position, key=lambda row: (" ".join(questions[row].lower().split()), position[row], row))
        batches = [
            (rows[i : i + batch_size], [position[row] for row in rows[i : i + batch_size]])
            for i in range(0, len(rows), batch_size)
        ]
        plan.append(([rows[0] for rows in chunk], batches))
    return plan


def answering_order(image_keys: Sequence[Hashable], questions: Sequence[str], images_per_chunk: int = 256) -> list[int]:
    """All rows in `answering_plan` order (chunks of images, questions sorted by text within a chunk): the
    order in which to present an evaluation set so that consecutive batches decode answers of similar
    length while each chunk's images stay close together."""
    plan = answering_plan(image_keys, questions, max(1, len(questions)), images_per_chunk)
    return [row for _, batches in plan for rows, _ in batches for row in rows]
