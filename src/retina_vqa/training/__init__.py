"""What the Trainer of the recipe adds and what a run leaves behind.

``trainer.py`` (`VqaTrainer`: masked batched generation, kept image-encoder outputs, non-finite loss stop),
``embedding_cache.py`` (image-encoder outputs kept per image), ``checkpoints.py`` (which checkpoint to resume
from), ``outputs.py`` (predictions.jsonl, the prior's scores), ``model_card.py`` (the README saved with a model).
"""
