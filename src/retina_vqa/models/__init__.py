"""The models the recipe trains and answers with, and every touch of transformers internals.

``family.py`` (`Family`: what differs between BLIP VQA, BLIP-2 and InstructBLIP, their tokenisation side by side,
the answer-token budget), ``blip.py`` (BLIP VQA's encoder and decoder steps, batched answering, model options),
``blip2.py`` (BLIP-2 / InstructBLIP: image placeholders, targets, answers, query-token init), ``attention.py`` (the
cross-attention mask fix and fused attention), ``ranking.py`` (candidate answers scored by the model),
``lora.py`` (LoRA adapters: targets, wrapping, merging), ``loading.py`` (loading a saved model to answer, and the
checks every loaded model gets), ``generation_config.py`` (the answer settings saved with a model), ``compat.py``
(the private transformers names the recipe relies on and the versions they were tested with), ``tiny_blip.py`` and
``tiny_blip2.py`` (the small configs the tests and the demos train from scratch).
"""
