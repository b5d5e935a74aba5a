"""Shared helpers of the benchmarks: environment, synthetic data, models, the notebook baseline and reporting.

Every benchmark compares variants side by side in one process: `alternate` runs them A, B, C, then C, B, A,
... (so slow drift of a shared machine hits every variant alike), each run returns one measurement, and
`report` prints the medians, the ratios against a baseline, one JSON line (``BENCH_JSON {...}``) and a human
table.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "blip-tiny"
# Each model at the image size it is trained at: the demo's tiny BLIP at 128 px, blip-vqa-base at 384 px.
DEFAULT_IMAGE_SIZE = {"tiny": 128, "full": 384}
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
CACHE_ROOT = Path(os.environ.get("RETINA_VQA_BENCH_CACHE", Path(tempfile.gettempdir()) / "retina_vqa_bench"))

# Benchmarks run offline and without trackers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


# ----------------------------------------------------------------------------------------------- environment


def demo_setting(name: str) -> Any:
    """A value of the embedded demo's config (`configs/demo.yaml`), so that the benchmarks follow the demo."""
    import yaml

    settings = yaml.safe_load(DEMO_CONFIG.read_text())
    if name not in settings:
        raise KeyError(f"{DEMO_CONFIG} has no {name!r}; it has {sorted(settings)}")
    return settings[name]


def quiet() -> None:
    """Silence the libraries' info logs and progress bars (the benchmarks print their own tables)."""
    import datasets
    import transformers

    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children) in MiB; ru_maxrss is KiB on Linux."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    maxrss = resource.getrusage(who).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def current_rss_mb() -> float | None:
    """Resident memory now (psutil), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


# ------------------------------------------------------------------------------------------------------ data


def synthetic_dataset(num_train_images: int, num_test_images: int, image_size: int, seed: int = 0) -> Path:
    """A synthetic RetinaVQA saved with save_to_disk (13 questions per image), generated once and cached."""
    from retina_vqa.synthetic import generate_dataset

    path = CACHE_ROOT / f"synthetic-{num_train_images}-{num_test_images}-{image_size}px-seed{seed}"
    if not (path / "dataset_dict.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent))
        generate_dataset(num_train_images, 1, num_test_images, image_size=image_size, seed=seed).save_to_disk(
            str(tmp / "data")
        )
        os.replace(tmp / "data", path)
        os.rmdir(tmp)
    return path


def load_split(path: Path, split: str):
    from datasets import load_from_disk

    return load_from_disk(str(path))[split]


def data_args(dataset_dir: Path | str, **overrides: Any):
    """The recipe's `DataTrainingArguments` (defaults of run_vqa.py) for a saved dataset."""
    from retina_vqa.arguments import DataTrainingArguments

    return DataTrainingArguments(dataset_dir=str(dataset_dir), **overrides)


def load_processor(image_size: int):
    """The tiny config's processor (the only tokenizer available offline) at the given image size."""
    from retina_vqa.arguments import ModelArguments
    from retina_vqa.training.model_setup import load_processor as recipe_load_processor

    return recipe_load_processor(
        ModelArguments(model_name_or_path="", config_name=str(TINY_CONFIG), image_size=image_size)
    )


# ---------------------------------------------------------------------------------------------------- models


def model_config_dir(size: str, image_size: int, tokenizer) -> Path:
    """A config folder for `load_model`: ``tiny`` (configs/blip-tiny) or ``full`` (``BlipConfig()``, the
    blip-vqa-base architecture, ~385M parameters) at ``image_size``.

    The full config keeps blip-vqa-base's 30524-token vocabulary (so the decoder head costs what it costs)
    but takes its special-token ids from the tiny tokenizer, the only one available offline.
    """
    from transformers import AutoConfig, BlipConfig

    if size == "tiny":
        config = AutoConfig.from_pretrained(TINY_CONFIG)
    elif size == "full":
        config = BlipConfig()
        text = config.text_config
        text.bos_token_id = tokenizer.bos_token_id
        text.pad_token_id = tokenizer.pad_token_id
        text.sep_token_id = tokenizer.sep_token_id
        text.eos_token_id = tokenizer.sep_token_id
        # BlipVisionConfig's 1e-10 is for loading weights; from scratch use the text range (as load_model does).
        config.vision_config.initializer_range = text.initializer_range
    else:
        raise ValueError(f"unknown model size {size!r}: tiny or full")
    config.vision_config.image_size = image_size
    return save_config_dir(f"config-{size}-{image_size}px", config)


def save_config_dir(name: str, config, processor=None) -> Path:
    """``config`` (and ``processor``) written to the folder ``name`` of the bench cache, for loaders that take a
    path; returns the folder."""
    path = CACHE_ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return path


def model_arguments(size: str, image_size: int, tokenizer):
    from retina_vqa.arguments import ModelArguments

    return ModelArguments(
        model_name_or_path="",
        config_name=str(model_config_dir(size, image_size, tokenizer)),
        processor_name=str(TINY_CONFIG),
        image_size=image_size,
    )


def recipe_model(size: str, image_size: int, processor, seed: int = 0):
    """`SharedImageBlipForQuestionAnswering` as run_vqa.py builds it (`models.loading.load_model`)."""
    import torch

    from retina_vqa.training.model_setup import load_model

    torch.manual_seed(seed)
    return load_model(model_arguments(size, image_size, processor.tokenizer), processor)


def plain_model(size: str, image_size: int, processor, seed: int = 0):
    """Plain transformers `BlipForQuestionAnswering` of the same config, as a notebook builds it."""
    import torch
    from transformers import AutoConfig, BlipForQuestionAnswering

    config = AutoConfig.from_pretrained(model_config_dir(size, image_size, processor.tokenizer))
    torch.manual_seed(seed)
    return BlipForQuestionAnswering(config)


@contextlib.contextmanager
def repeated_image_keys() -> Iterator[None]:
    """Within: the question encoder projects each question's image to keys and values (the rows repeated), as
    before `retina_vqa.models.attention.shared_encoder_rows`."""
    from retina_vqa.models import blip

    shares = blip.cross_attention_shares_rows
    blip.cross_attention_shares_rows = lambda text_model: False
    try:
        yield
    finally:
        blip.cross_attention_shares_rows = shares


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- notebook baseline


class NotebookVqaDataset:
    """The Dataset of the usual BLIP VQA notebook: one processor call per item, everything padded to 32.

    Kept as the notebooks write it, bugs included: ``labels`` are the padded answer ids (pad ids, not -100,
    and ``[CLS]`` instead of ``[DEC]`` first), no ``decoder_input_ids``. ``truncation=True`` is the one
    change: without it an answer longer than 32 tokens breaks the default collate.
    """

    def __init__(self, dataset, processor, max_length: int = 32) -> None:
        self.dataset = dataset
        self.processor = processor
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = self.dataset[idx]
        image = item["image"].convert("RGB")
        encoding = self.processor(
            images=image,
            text=item["question"],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        labels = self.processor.tokenizer(
            item["answer"], padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )["input_ids"]
        encoding = {k: v.squeeze(0) for k, v in encoding.items()}
        encoding["labels"] = labels.squeeze(0)
        return encoding


def notebook_loader(dataset, processor, batch_size: int, num_workers: int = 0, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        NotebookVqaDataset(dataset, processor),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def recipe_loader(prepared, collator, batch_size: int, num_workers: int = 0, group_by_image: bool = True, seed=0):
    """A DataLoader as the recipe's Trainer builds it: `ImageGroupedSampler` (or random order) + `VqaCollator`."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from retina_vqa.data.preprocessing import IMAGE_KEY
    from retina_vqa.data.sampling import ImageGroupedSampler

    if group_by_image:
        sampler = ImageGroupedSampler(prepared[IMAGE_KEY], seed=seed)
    else:
        sampler = RandomSampler(prepared, generator=torch.Generator().manual_seed(seed))
    return DataLoader(prepared, batch_size=batch_size, sampler=sampler, collate_fn=collator, num_workers=num_workers)


def train_recipe(model, prepared, processor, collator, callback, image_embedding_cache=None, **training_args):
    """Train ``model`` with the recipe's `VqaTrainer` in a temporary folder, nothing saved, logged or evaluated.

    ``training_args`` go to `VqaTrainingArguments` (batch size, steps, learning rate, workers, ...);
    ``callback`` times the steps. Returns the Trainer's `TrainOutput`.
    """
    from transformers.trainer_callback import PrinterCallback

    from retina_vqa.arguments import VqaTrainingArguments
    from retina_vqa.training.trainer import VqaTrainer

    defaults = {"save_strategy": "no", "eval_strategy": "no", "logging_strategy": "no", "report_to": "none"}
    with tempfile.TemporaryDirectory() as output_dir:
        args = VqaTrainingArguments(output_dir=output_dir, disable_tqdm=True, seed=42, **defaults, **training_args)
        trainer = VqaTrainer(
            model=model,
            args=args,
            train_dataset=prepared,
            processing_class=processor,
            data_collator=collator,
            callbacks=[callback],
            image_embedding_cache=image_embedding_cache,
        )
        trainer.remove_callback(PrinterCallback)  # the Trainer's own metrics line; the benchmarks print tables
        result = trainer.train()
        del trainer
    return result


def recipe_collator(processor, dataset_args=None, num_workers: int = 0, image_cache: bool = False):
    """`VqaCollator` as run_vqa.py builds it (`training.evaluation.build_collator`); with ``image_cache`` its
    decoded-image cache too (the default budget; `fresh_image_cache` gives each timed run its own, empty one).
    Without it (the default here) every batch decodes its images: a cache warmed by one variant's run would favour
    the runs after it."""
    from retina_vqa.arguments import DataTrainingArguments
    from retina_vqa.data.collator import VqaCollator
    from retina_vqa.data.image_cache import DecodedImageCache

    cache_gb = DataTrainingArguments.__dataclass_fields__["decoded_image_cache_gb"].default
    return VqaCollator(
        image_processor=processor.image_processor,
        pad_token_id=processor.tokenizer.pad_token_id,
        max_image_side=dataset_args.max_image_side if dataset_args is not None else 2048,
        image_cache=DecodedImageCache.per_process(cache_gb, num_workers) if image_cache else None,
    )


def fresh_image_cache(collator):
    """``collator`` with a new, empty decoded-image cache of the same budget (none if it has none): each timed run
    starts cold, as a training run does."""
    import dataclasses

    from retina_vqa.data.image_cache import DecodedImageCache

    if collator.image_cache is None:
        return collator
    return dataclasses.replace(collator, image_cache=DecodedImageCache(collator.image_cache.max_bytes))


# -------------------------------------------------------------------------------------------------- timing


def alternate(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each variant ``repeats`` times, alternating the order (A B C, C B A, ...); collect the results."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            value = variants[name]()
            results[name].append(value)
            print(f"  repeat {repeat + 1}/{repeats} {name}: {value:.3f}", file=sys.stderr, flush=True)
    return results


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


# ------------------------------------------------------------------------------------------------- reporting


def summarise(results: dict[str, list[float]], baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """Median, min, max and runs per variant, and the ratio of each median to the baseline's."""
    summary: dict[str, dict[str, Any]] = {}
    base = median(results[baseline]) if baseline in results else None
    for name, values in results.items():
        entry: dict[str, Any] = {
            "median": round(median(values), 4),
            "min": round(min(values), 4) if values else None,
            "max": round(max(values), 4) if values else None,
            "runs": [round(v, 4) for v in values],
        }
        if base is not None:
            entry[f"ratio_vs_{baseline}"] = round(ratio(median(values), base), 3)
        summary[name] = entry
    return summary


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table."""

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row, values in zip(cells, rows, strict=True):
        aligned = [
            c.rjust(w) if isinstance(v, int | float) else c.ljust(w)
            for c, w, v in zip(row, widths, values, strict=True)
        ]
        print("  ".join(aligned))


def emit_json(benchmark: str, payload: dict[str, Any]) -> None:
    """One JSON line, prefixed so it can be grepped out of the log: ``grep ^BENCH_JSON | cut -c12-``."""
    record = {"benchmark": benchmark, "machine": machine_info(), **payload}
    print("BENCH_JSON " + json.dumps(record, sort_keys=False, default=str), flush=True)


def report_child_peak_rss(command: list[str]) -> None:
    """Run `command` (a benchmark child that prints one JSON line last) from an otherwise idle process and print
    that line with the children's peak RSS added: the child's own peak memory, nothing of the parent's."""
    import subprocess

    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        sys.exit(completed.returncode)
    own = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps({"peak_rss_mb": peak_rss_mb(children=True), **own}))
