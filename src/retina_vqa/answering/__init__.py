"""Answering questions, the same way in evaluation, the Python API, predict and the app.

``candidates.py`` (the answers each question type is ranked against, and which list each row gets), ``plan.py``
(an evaluation's ranking plan and the batches that carry each row's list), ``step.py`` (one batch of one family:
generate some rows, encode the others for ranking), ``records.py`` (answers in row order and predictions.jsonl).
"""
