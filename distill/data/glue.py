"""GLUE data module: local GLUE TSVs (offline) or ``nyu-mll/glue`` from the hub; cached tokenization."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

from distill.data.sampling import train_loader
from distill.data.tasks import HUB_TEXT_COLUMNS, MODEL_INPUTS, TaskSpec, get_task
from distill.data.tsv import read_glue_tsv, task_file
from distill.errors import ConfigError

SPLITS = {"train": "train", "dev": "validation"}
# batches carry the student's own inputs under these keys when its tokenizer differs from the teacher's
STUDENT_PREFIX = "student_"
SOURCES = ("auto", "local", "hub")
PADDING = ("longest", "max_length")


class GLUEDataModule(L.LightningDataModule):
    """Tokenized GLUE train/dev sets with per-batch dynamic padding.

    Batches are dicts of ``input_ids``/``attention_mask``/``token_type_ids`` (B, T) int64, padded to the
    longest example of the batch, and ``labels`` (B,) int64 (classification) or float32 (regression).
    With a student tokenizer that differs from the teacher's (:meth:`use_student_tokenizer`) every example is
    tokenized by both and batches also carry ``student_input_ids`` / ``student_attention_mask`` [/
    ``student_token_type_ids``] (B, T_s), padded on their own; the usual keys stay the teacher's.

    Args:
        task: GLUE task name (``sst2``, ``cola``, ``mrpc``, ``rte``, ``stsb``).
        data_dir: folder holding GLUE task folders (``SST-2/`` ...) in the original TSV layouts.
        source: ``local`` reads ``data_dir``; ``hub`` loads ``nyu-mll/glue`` with ``datasets``; ``auto``
            uses ``data_dir`` when it is set, the hub otherwise.
        tokenizer: name or path of the (teacher's) tokenizer; usually set by the pipeline.
        max_train_samples / max_eval_samples: cap on examples (a seeded random subset), ``None`` for all.
        sampler: factory ``sampler(dataset, batch_size=...)`` of the training order (``data/sampler`` presets:
            torch's shuffle, or length-grouped batches); ``None``: torch's shuffle.
        num_workers / pin_memory: data-loader worker processes (kept alive across epochs) and pinned memory.
        padding: ``longest`` (each batch padded to its longest example) or ``max_length`` (every batch padded to
            ``max_length``: static shapes, for compilers and accelerators that recompile per shape).
    """

    def __init__(
        self,
        task: str,
        data_dir: str | None = None,
        source: str = "auto",
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        subset_seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
        sampler: Any = None,
        pin_memory: bool = False,
        padding: str = "longest",
    ) -> None:
        super().__init__()
        self.spec: TaskSpec = get_task(task)
        if source not in SOURCES:
            raise ConfigError(f"data.source={source!r} is not allowed; use one of {', '.join(SOURCES)}.")
        for key, value in (("data.max_train_samples", max_train_samples), ("data.max_eval_samples", max_eval_samples)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key}={value!r} must be a positive number of examples or null for all.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers!r} must be a whole number >= 0 (0: load in the main process).")
        if not isinstance(pin_memory, bool):
            raise ConfigError(f"data.pin_memory={pin_memory!r} must be true or false.")
        if sampler is not None and not callable(sampler):
            raise ConfigError(f"data.sampler must be a sampler preset (data/sampler=random or length_grouped); got {sampler!r}.")
        if padding not in PADDING:
            raise ConfigError(f"data.padding={padding!r} is not allowed; use {' or '.join(PADDING)}.")
        if max_length < 8:
            raise ConfigError(f"data.max_length={max_length} must be at least 8 tokens.")
        self.data_dir = data_dir
        self.source = "local" if source == "auto" and data_dir else ("hub" if source == "auto" else source)
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.subset_seed = subset_seed
        self.num_workers = num_workers
        self.sampler, self.pin_memory, self.padding = sampler, pin_memory, padding
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._student_tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: dict[str, Any] = {}

    # ---- properties used by the pipeline -------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def is_regression(self) -> bool:
        return self.spec.is_regression

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise ConfigError("data.tokenizer is not set; the pipeline sets it to the teacher's tokenizer.")
            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
        return self._tokenizer

    @property
    def student_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The student's own tokenizer when it differs from the teacher's; None: the student reads the teacher's inputs."""
        return self._student_tokenizer

    def use_student_tokenizer(self, name: str | None) -> PreTrainedTokenizerBase | None:
        """Tokenize for the student with ``name`` (``student.tokenizer``) too; returns it when it tokenizes
        differently from the teacher's tokenizer (the splits are then tokenized again, by both), else None and
        batches stay exactly as without it."""
        student = None if name is None else load_tokenizer(name, "student.tokenizer")
        if student is not None and same_tokenization(student, self.tokenizer):
            student = None
        if student is not None or self._student_tokenizer is not None:
            self.datasets = {}  # tokenized again (by both tokenizers, or by the teacher's alone)
        self._student_tokenizer = student
        return student

    def check_files(self) -> None:
        """Raise ``DataError`` now if a local split file is missing (cheap; called before heavy work)."""
        if self.source == "local":
            for split in SPLITS:
                task_file(self.data_dir, self.spec, split)

    # ---- loading -------------------------------------------------------------------------------
    def _raw_split(self, split: str) -> dict[str, list]:
        if self.source == "local":
            return read_glue_tsv(task_file(self.data_dir, self.spec, split), self.spec)
        import datasets

        ds = datasets.load_dataset("nyu-mll/glue", self.spec.hub_config, split=SPLITS[split])
        cols = HUB_TEXT_COLUMNS[self.spec.name]
        out = {"text_a": list(ds[cols[0]]), "label": list(ds["label"])}
        if len(cols) == 2:
            out["text_b"] = list(ds[cols[1]])
        return out

    def _cache_file(self, split: str, n: int | None) -> str | None:
        if self.cache_dir is None:
            return None
        parts = [self.spec.name, split, self.source, str(self.data_dir), self.tokenizer_name,
                 _vocab_digest(self.tokenizer), self.max_length, n, self.subset_seed]
        if self._student_tokenizer is not None:  # only then: the cache entries of one-tokenizer runs keep their keys
            parts.append(["student", _vocab_digest(self._student_tokenizer, full=True),
                          _pipeline(self._student_tokenizer)])
        key = json.dumps(parts)
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        path = self.cache_dir / "tokenized" / f"{self.spec.name}-{split}-{digest}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def texts(self, split: str) -> list:
        """The untokenized examples of the whole ``split`` (``train`` or ``dev``): texts, or ``(text_a, text_b)``
        pairs; e.g. the corpus a student's vocabulary is trimmed to (``student.trim_vocab``)."""
        raw = self._raw_split(split)
        return list(zip(raw["text_a"], raw["text_b"], strict=True)) if "text_b" in raw else list(raw["text_a"])

    def load_split(self, split: str, limit: int | None = None):
        """Tokenized ``datasets.Dataset`` of ``split`` (``train`` or ``dev``), cached on disk by content key."""
        import datasets

        raw = datasets.Dataset.from_dict(self._raw_split(split))
        if limit is not None and limit < len(raw):
            raw = raw.shuffle(seed=self.subset_seed).select(range(limit))
        tok, student, max_length = self.tokenizer, self._student_tokenizer, self.max_length
        pair = "text_b" in raw.column_names

        # the closure must not capture self: datasets pickles it for its fingerprint, and self holds the trainer
        def encode(batch: dict[str, list]) -> dict[str, list]:
            args = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
            enc = tok(*args, truncation=True, max_length=max_length)
            if student is not None:  # the student's own tokens, side by side with the teacher's
                for key, value in student(*args, truncation=True, max_length=max_length).items():
                    enc[STUDENT_PREFIX + key] = value
            enc["labels"] = batch["label"]
            return enc

        cache = self._cache_file(split, limit)
        ds = raw.map(encode, batched=True, remove_columns=raw.column_names, cache_file_name=cache,
                     load_from_cache_file=cache is not None, desc=f"tokenize {self.spec.name}/{split}")
        ds.set_format("torch")
        return ds

    def setup(self, stage: str | None = None) -> None:
        if "train" not in self.datasets and stage in (None, "fit"):
            self.datasets["train"] = self.load_split("train", self.max_train_samples)
        if "dev" not in self.datasets:
            self.datasets["dev"] = self.load_split("dev", self.max_eval_samples)

    # ---- the training set as the teacher-output cache sees it (distill/teacher_cache.py) -------
    def train_set(self):
        """The (tokenized, possibly augmented) training set, in its stored order."""
        self.setup("fit")
        return self.datasets["train"]

    def index_train_set(self) -> None:
        """Give every training row its position (``idx``): batches then name the cached teacher outputs."""
        ds = self.train_set()
        if "idx" not in ds.column_names:
            self.datasets["train"] = ds.add_column("idx", list(range(len(ds))))
            self.datasets["train"].set_format("torch")

    def collate(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return self._collate(features)

    def sampler_key(self) -> str | None:
        """The training order, for cache keys of things trained on it; None for torch's shuffle (the default)."""
        target = getattr(getattr(self.sampler, "func", self.sampler), "__name__", None)
        if self.sampler is None or target == "TorchOrderRandomSampler":
            return None
        return f"{target}{sorted(getattr(self.sampler, 'keywords', {}).items())}"

    # ---- loaders -------------------------------------------------------------------------------
    def _pad(self, tokenizer: PreTrainedTokenizerBase, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return DataCollatorWithPadding(tokenizer, padding=self.padding, max_length=self.max_length,
                                       return_tensors="pt")(features)

    def _collate(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        student = None
        if self._student_tokenizer is not None:  # each side padded with its own tokenizer (pad ids, lengths differ)
            student = [{k[len(STUDENT_PREFIX):]: v for k, v in f.items() if k.startswith(STUDENT_PREFIX)} for f in features]
            features = [{k: v for k, v in f.items() if not k.startswith(STUDENT_PREFIX)} for f in features]
        batch = self._pad(self.tokenizer, features)
        if student is not None:
            batch.update({STUDENT_PREFIX + k: v for k, v in self._pad(self._student_tokenizer, student).items()})
        batch["labels"] = batch["labels"].float() if self.is_regression else batch["labels"].long()
        return batch

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        # resumable: a run killed in the middle of an epoch resumes with the very batches it would have seen next
        return train_loader(self.datasets[split], batch_size, self._collate, self.num_workers, shuffle=shuffle,
                            sampler=self.sampler, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# ---- tokenizers -------------------------------------------------------------------------------
def load_tokenizer(name: str, key: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name)``; a folder or hub id without a tokenizer is one sentence naming ``key``."""
    try:
        return AutoTokenizer.from_pretrained(str(name))
    except (OSError, ValueError, TypeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(f"{key}={name!r} is not a tokenizer folder or hub id ({reason}).") from None


def _pipeline(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {"class": type(tokenizer).__name__, "lower": getattr(tokenizer, "do_lower_case", None)}
    spec = json.loads(backend.to_str())
    return {part: spec.get(part) for part in ("normalizer", "pre_tokenizer", "post_processor")}


def same_tokenization(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """True when ``a`` and ``b`` turn every text into the same ids: one vocabulary and one normalisation."""
    return a.get_vocab() == b.get_vocab() and _pipeline(a) == _pipeline(b)


def _vocab_digest(tokenizer: PreTrainedTokenizerBase, full: bool = False) -> str:
    items = sorted(tokenizer.get_vocab().items())
    vocab = json.dumps(items if full else items[:: max(1, len(tokenizer) // 512)])
    return hashlib.sha1(vocab.encode()).hexdigest()


def student_view(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` as the student reads it: its own inputs (``student_*``) under the usual keys, labels kept; a
    batch without student inputs is returned as is."""
    if STUDENT_PREFIX + "input_ids" not in batch:
        return batch
    rest = {k: v for k, v in batch.items() if k not in MODEL_INPUTS and not k.startswith(STUDENT_PREFIX)}
    return {**rest, **{k[len(STUDENT_PREFIX):]: v for k, v in batch.items() if k.startswith(STUDENT_PREFIX)}}
