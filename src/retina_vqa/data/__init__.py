"""Question-answer data from disk to batches.

``loading.py`` (the one loader, split and column checks), ``layout.py`` (image rows, each image stored once, and
question rows), ``image_table.py`` (question rows' references to their stored image), ``images.py`` (any image a
user has to RGB, and its identity), ``validation.py`` (every row checked before training, each image once),
``preprocessing.py`` (text tokenised once, images keyed), ``collator.py`` (pixels, padding and BLIP's decoder
targets per batch), ``pixels.py`` (the image processor's pixel values, made for a whole batch at once),
``augment.py`` (``--augment``, training batches only), ``sampling.py`` (image-grouped training order),
``ordering.py`` (answering order for evaluation and inference).
"""
