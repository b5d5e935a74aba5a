"""The models the recipe trains and answers with, and every touch of transformers internals.

``blip.py`` (BLIP VQA's encoder and decoder steps, batched answering, model options), ``attention.py`` (the
cross-attention mask fix and fused attention), ``loading.py`` (one preparation for training and answering),
``generation_config.py`` (the answer settings saved with a model), ``compat.py`` (the private transformers
names the recipe relies on and the versions they were tested with), ``tiny_blip.py`` (the small config the
tests and the demo train from scratch).
"""
