"""Question-answer data from disk to batches.

``loading.py`` (the one loader, split and column checks), ``images.py`` (any image a user has to RGB, and its
identity), ``validation.py`` (every row checked before training), ``preprocessing.py`` (text tokenised once,
images keyed), ``collator.py`` (pixels, padding and BLIP's decoder targets per batch), ``sampling.py``
(image-grouped training order), ``ordering.py`` (answering order for evaluation and inference).
"""
