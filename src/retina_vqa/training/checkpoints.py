"""Finding the checkpoint to resume from, and never one that a kill left half-written.

The Trainer writes a checkpoint folder in place (weights, optimizer, scheduler, RNG state) and its
`trainer_state.json` last. A run killed while saving leaves `checkpoint-N` without a readable
trainer state; transformers' `get_last_checkpoint` would still pick it (the highest N) and the resume
would crash or start from garbage. Here a checkpoint counts only when its trainer state parses and
names the same step as the folder.
"""

from __future__ import annotations

import json
import logging
import os
import re

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
_FSDP_SHARDS = re.compile(r"^pytorch_model_fsdp_\d+$")  # accelerate's FSDP_MODEL_NAME + model index


def is_complete(checkpoint_dir: str) -> bool:
    """True when the checkpoint's trainer state (written last) is there, parses, and matches its step."""
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(checkpoint_dir)))
    state_file = os.path.join(checkpoint_dir, TRAINER_STATE)
    if match is None or not os.path.isfile(state_file):
        return False
    try:
        with open(state_file, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return False
    return has_weights(checkpoint_dir) and state.get("global_step") == int(match.group(1))


def has_weights(checkpoint_dir: str) -> bool:
    """Model weights the Trainer can resume from: safetensors, or FSDP's sharded `pytorch_model_fsdp_N/`.

    With `fsdp_state_dict_type: SHARDED_STATE_DICT` a checkpoint holds no safetensors, only one
    torch.distributed.checkpoint folder per model, whose `.metadata` is written after every rank's shard.
    """
    for name in os.listdir(checkpoint_dir):
        if name.endswith(".safetensors"):
            return True
        if _FSDP_SHARDS.match(name) and os.path.isfile(os.path.join(checkpoint_dir, name, ".metadata")):
            return True
    return False


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint with the highest step in `output_dir`, skipping (and naming) broken ones."""
    if not os.path.isdir(output_dir):
        return None
    candidates = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(candidates):
        path = os.path.join(output_dir, name)
        if is_complete(path):
            return path
        logger.warning("Skipping %s: incomplete (the run was probably stopped while saving it).", path)
    return None


def detect_last_checkpoint(
    output_dir: str, do_train: bool, overwrite_output_dir: bool, resume_from_checkpoint
) -> str | None:
    """The transformers examples' guard: resume from the last complete checkpoint, never clobber other files.

    A run given an explicit ``--resume_from_checkpoint`` resumes from it wherever its output folder is, so the
    guard applies only when the output folder is to be found or started afresh.
    """
    if not (os.path.isdir(output_dir) and do_train and not overwrite_output_dir):
        return None
    last_checkpoint = last_complete_checkpoint(output_dir)
    if last_checkpoint is None and resume_from_checkpoint is None and os.listdir(output_dir):
        raise ValueError(
            f"Output directory ({output_dir}) already exists and is not empty, and holds no complete checkpoint "
            "to resume from. Use --overwrite_output_dir to train in it anyway, --resume_from_checkpoint to resume "
            "from a checkpoint elsewhere, or choose another --output_dir."
        )
    if last_checkpoint is not None and resume_from_checkpoint is None:
        logger.warning(
            "Checkpoint detected, resuming training at %s. To train from scratch instead, change "
            "--output_dir or add --overwrite_output_dir.",
            last_checkpoint,
        )
    return last_checkpoint
