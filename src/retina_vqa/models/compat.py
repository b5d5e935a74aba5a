"""Every transformers internal the recipe relies on, imported here and nowhere else, and the tested versions.

The recipe fixes what transformers gets wrong for BLIP VQA (models/attention.py, models/blip.py) and
extends its Trainer (training/trainer.py). Those fixes lean on names that are not public API: BLIP's
attention classes (whose ``forward`` `models.attention` re-implements), its additive float masks, the
decoder's ``reduction`` argument, and the Trainer's private hooks. If upstream renames one, an override is
silently no longer called and a fix is silently gone. So:

* every private name is imported from this module, which states the transformers range it was tested
  with (`TESTED_TRANSFORMERS`) and warns loudly, naming the fix, outside it (`check_transformers_version`);
* `check_trainer_hooks` (called when the Trainer is built) fails when a Trainer hook that `VqaTrainer`
  overrides no longer exists upstream, instead of training without image grouping or masked generation;
* tests/models/test_compat.py holds the canaries: tests that pass while upstream BLIP is still broken
  in the ways the recipe works around, and say what to delete when one starts failing.
"""

from __future__ import annotations

import inspect
import logging
import warnings

import transformers
from accelerate import PartialState
from accelerate.utils import DistributedType
from packaging.version import Version
from transformers import Seq2SeqTrainer
from transformers.cache_utils import EncoderDecoderCache
from transformers.image_processing_backends import PilBackend
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.integrations.fsdp import is_fsdp_managed_module
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.blip.modeling_blip import BlipAttention, BlipTextVisionModelOutput
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention
from transformers.utils.hub import hf_api

logger = logging.getLogger(__name__)

__all__ = [
    "TESTED_TRANSFORMERS",
    "TRAINER_HOOKS",
    "BlipAttention",
    "BlipImageProcessorPil",
    "BlipTextSelfAttention",
    "BlipTextVisionModelOutput",
    "EncoderDecoderCache",
    "PilBackend",
    "allow_fsdp_on_cpu_processes",
    "check_trainer_hooks",
    "check_transformers_version",
    "configured_attention",
    "hf_api",
    "is_deepspeed_zero3_enabled",
    "is_fsdp_managed_module",
    "mark_generation_config_deliberate",
]

# [lowest, first untested): the versions whose BLIP and Trainer internals the test suite has run against.
TESTED_TRANSFORMERS = ("5.24.0", "5.26.0")

# Trainer internals that VqaTrainer overrides or sets, and why. A hook that upstream renames is never called.
TRAINER_HOOKS = {
    "get_train_dataloader": "the training collator (--augment) for training batches only",
    "_get_train_sampler": "image-grouped training order (data/sampling.py)",
    "_get_eval_sampler": "evaluation in dataset order (outputs are paired with rows by position)",
    "_prepare_inputs": "kept image-encoder outputs and torch.compile's dynamic sizes",
    "prediction_step": "generation with the real question mask, no labels handed to generate",
    "evaluation_loop": "gather_for_metrics instead of gather, and one image-encoder pass per evaluation",
    "training_step": "stopping on a non-finite loss on every rank; naming the distributed wrapper",
    "create_accelerator_and_postprocess": "FSDP on CPU processes (allow_fsdp_on_cpu_processes)",
    "save_model": "a full model.safetensors at the end of an FSDP run whose checkpoints are sharded",
}
# Trainer internals that VqaTrainer.push_to_hub calls (it replaces upstream's upload, see training/trainer.py).
TRAINER_CALLS = ("init_hf_repo", "_finish_current_push", "create_model_card")
# Attributes that Seq2SeqTrainer.evaluate/predict set and VqaTrainer reads or replaces.
TRAINER_ATTRIBUTES = ("gather_function", "_gen_kwargs")


def check_transformers_version(version: str | None = None) -> str | None:
    """Warn (and return the warning) when transformers is outside `TESTED_TRANSFORMERS`; fail below 5.0."""
    installed = Version(version or transformers.__version__)
    low, high = (Version(v) for v in TESTED_TRANSFORMERS)
    if installed.major < 5:
        raise ImportError(
            f"retina-vqa needs transformers 5 (BLIP's attention and the Trainer changed in 5.0); found {installed}. "
            f"Install it with: pip install 'transformers>={low},<{high}'"
        )
    if low <= installed < high:
        return None
    message = (
        f"transformers {installed} is outside the range retina-vqa was tested with (>={low},<{high}). The recipe "
        "patches BLIP's attention (cross-attention mask, fused attention), its answer generation and Trainer hooks "
        "(retina_vqa.models.compat lists them): run `pytest tests/models/test_compat.py tests/models` to see whether "
        f"they still hold, or install a tested version: pip install 'transformers>={low},<{high}'."
    )
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    logger.warning(message)
    return message


def check_trainer_hooks(trainer_class: type = Seq2SeqTrainer) -> None:
    """Raise when a Trainer hook that VqaTrainer overrides, or an attribute it relies on, is gone upstream."""
    missing = [
        f"{name} ({why})" for name, why in TRAINER_HOOKS.items() if not callable(getattr(trainer_class, name, None))
    ]
    missing += [
        f"{name} (called by push_to_hub)" for name in TRAINER_CALLS if not callable(getattr(trainer_class, name, None))
    ]
    evaluate_source = inspect.getsource(trainer_class.evaluate) + inspect.getsource(trainer_class.predict)
    missing += [
        f"{name} (set by Seq2SeqTrainer.evaluate)" for name in TRAINER_ATTRIBUTES if name not in evaluate_source
    ]
    if missing:
        raise RuntimeError(
            f"transformers {transformers.__version__} no longer has the Trainer internals retina-vqa overrides: "
            f"{'; '.join(missing)}. Without them training and evaluation would run without the recipe's fixes. "
            f"Install a tested version: pip install 'transformers>={TESTED_TRANSFORMERS[0]},<{TESTED_TRANSFORMERS[1]}'."
        )


def allow_fsdp_on_cpu_processes(fsdp_requested: bool) -> bool:
    """Let accelerate shard with FSDP on CPU processes (gloo); returns whether it had to step in.

    accelerate (tested: 1.15) turns a run into FSDP only from a GPU-type distributed state: on CPU processes it
    keeps ``MULTI_CPU`` and drops the FSDP plugin, so an FSDP config silently runs as DDP. FSDP2 itself runs on
    the CPU. Marking the shared state multi-device (accelerate's private ``PartialState._shared_state``) before
    the Trainer builds its Accelerator makes accelerate apply ``fully_shard``; the process group and the CPU
    device stay as they are. tests/training/test_sharded.py checks that the run really shards.
    """
    state = PartialState()
    if not (fsdp_requested and state.distributed_type == DistributedType.MULTI_CPU):
        return False
    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return True


def configured_attention(config: transformers.PretrainedConfig) -> str | None:
    """The attention implementation a config was set to (transformers keeps it in the private
    ``_attn_implementation``), to restore it after `set_attn_implementation`."""
    return config._attn_implementation


def mark_generation_config_deliberate(config: transformers.GenerationConfig) -> None:
    """Mark generation settings as chosen, not derived from the model config (which transformers regenerates)."""
    config._from_model_config = False


check_transformers_version()
