"""What the Trainer of the recipe adds and what a run leaves behind.

``model_setup.py`` (the model and processor a run's flags ask for), ``trainer.py`` (`VqaTrainer`: masked batched
generation, ranked answers, kept image-encoder outputs, non-finite loss stop, the hub push), ``embedding_cache.py``
(image-encoder outputs kept per image), ``image_objective.py`` (``--image_loss_weight``: the image encoder's ``[CLS]``
learns each image's closed answers), ``patch_dropout.py`` (``--patch_dropout``: the image encoder trains on part of
each image's patches), ``checkpoints.py`` (which checkpoint to resume from), ``outputs.py`` (the
question prior's scores), ``model_card.py`` (the README saved with a model).
"""
