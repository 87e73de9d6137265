"""Unlabeled text for general distillation: GLUE training sentences or text files, tokenized, optionally masked.

Texts are every line of ``text_files``, or by default every training sentence of the GLUE tasks found
in ``data_dir`` (both sentences of pair tasks), stripped and deduplicated (first occurrence wins), then
a seeded random subset of ``max_samples`` kept in order. The data module's :meth:`fingerprint` (a hash
of the texts and the tokenization settings) is part of the cache key of a phase that trains on it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from distill.data.masking import collate_masked_rows, mask_batch, mask_rows
from distill.data.sampling import train_loader
from distill.data.tasks import TASKS
from distill.data.tsv import read_glue_tsv
from distill.errors import ConfigError, DataError


def collect_texts(data_dir: str | Path | None, text_files=None, max_samples: int | None = None,
                  seed: int = 0, key: str = "data") -> list[str]:
    """Unlabeled texts: lines of ``text_files`` or GLUE training sentences; deduplicated, optionally subsampled.

    ``key`` names the config node in messages (e.g. ``phases.general.data``).
    """
    texts: list[str] = []
    if text_files:
        for name in text_files:
            path = Path(str(name)).expanduser()
            if not path.is_file():
                raise DataError(f"{key}.text_files names {path}, which is not a file.")
            texts += path.read_text(encoding="utf-8").splitlines()
    else:
        if not data_dir:
            raise ConfigError(f"{key} needs data_dir (a folder of GLUE tasks) or text_files.")
        for spec in TASKS.values():
            path = Path(data_dir).expanduser() / spec.folder / "train.tsv"
            if path.is_file():
                columns = read_glue_tsv(path, spec)
                texts += columns["text_a"] + columns.get("text_b", [])
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if not unique:
        where = f"{key}.text_files={list(text_files)}" if text_files else f"data_dir={str(data_dir)!r} (GLUE train.tsv files)"
        raise DataError(f"{key} found no text in {where}.")
    if max_samples is not None:
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ConfigError(f"{key}.max_samples={max_samples!r} must be a positive number or null for all.")
        if max_samples < len(unique):
            keep = sorted(random.Random(seed).sample(range(len(unique)), max_samples))
            unique = [unique[i] for i in keep]
    return unique


class TextDataModule(L.LightningDataModule):
    """Unlabeled texts tokenized once; batches padded to their longest text, masked when ``mask_prob`` is set.

    Batches: ``input_ids``/``attention_mask``/``token_type_ids`` (B, T) int64, plus ``mlm_labels`` (B, T)
    int64 and ``mlm_mask`` (B, T) bool with masking: drawn afresh for every batch, or once per text from ``seed``
    with ``static_masking`` (:func:`~distill.data.masking.mask_rows`; the teacher's outputs can then be
    cached). No validation set. Give ``texts`` directly, or
    ``text_files`` / ``data_dir`` / ``max_samples`` / ``seed`` to collect them (:func:`collect_texts`);
    ``config_key`` names the config node in messages.
    """

    has_validation = False

    def __init__(self, tokenizer, texts: list[str] | None = None, text_files=None, data_dir: str | None = None,
                 max_samples: int | None = None, seed: int = 0, max_length: int = 64, batch_size: int = 32,
                 mask_prob: float | None = None, config_key: str = "data", static_masking: bool = False) -> None:
        super().__init__()
        key = config_key
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}.{name}={value!r} must be a positive whole number.")
        if mask_prob is not None and not 0.0 < mask_prob < 1.0:
            raise ConfigError(f"{key}.mask_prob={mask_prob} must be between 0 and 1, or null for no masking.")
        if not isinstance(static_masking, bool):
            raise ConfigError(f"{key}.static_masking={static_masking!r} must be true or false.")
        if static_masking and mask_prob is None:
            raise ConfigError(f"{key}.static_masking=true needs {key}.mask_prob (a share between 0 and 1).")
        self.static_masking, self.seed = static_masking, seed
        self.texts = list(texts) if texts is not None else collect_texts(data_dir, text_files, max_samples, seed, key)
        self.tokenizer = tokenizer
        self.max_length, self.batch_size, self.mask_prob = max_length, batch_size, mask_prob
        self.dataset: list[dict[str, list[int]]] | None = None

    def fingerprint(self) -> str:
        """A hash of the texts, the tokenizer's vocabulary size and the batching settings."""
        blob = json.dumps({"texts": hashlib.sha1("\n".join(self.texts).encode()).hexdigest(),
                           "vocab": len(self.tokenizer), "max_length": self.max_length,
                           "batch_size": self.batch_size, "mask_prob": self.mask_prob}, sort_keys=True)
        if self.static_masking:  # the masks are drawn from the seed (earlier fingerprints stay unchanged)
            blob += json.dumps({"static_masking": True, "seed": self.seed})
        return hashlib.sha1(blob.encode()).hexdigest()

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            enc = self.tokenizer(self.texts, truncation=True, max_length=self.max_length)
            self.dataset = [{k: enc[k][i] for k in enc} for i in range(len(self.texts))]
            if self.static_masking:
                self.dataset = mask_rows(self.dataset, self.tokenizer, self.mask_prob, self.seed)

    def train_set(self) -> list[dict[str, list[int]]]:
        self.setup()
        return self.dataset

    def index_train_set(self) -> None:
        """Give every text its position (``idx``): batches then name the cached teacher outputs."""
        self.dataset = [{**row, "idx": i} for i, row in enumerate(self.train_set())]

    def collate(self, features: list[dict[str, list[int]]]):
        return self._collate(features)

    def teacher_output_refusal(self) -> str | None:
        """Why the teacher's outputs on this data cannot be cached (masks drawn afresh every epoch), or None."""
        if self.mask_prob and not self.static_masking:
            return ("tokens are masked afresh every epoch (data.mask_prob; data.static_masking=true masks each text "
                    "once), so the teacher's outputs change")
        return None

    def _collate(self, features: list[dict[str, list[int]]]):
        pad = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        if self.static_masking:
            return collate_masked_rows(features, pad)
        batch = dict(pad(features))
        return mask_batch(batch, self.tokenizer, self.mask_prob) if self.mask_prob else batch

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return train_loader(self.dataset, self.batch_size, self._collate)
