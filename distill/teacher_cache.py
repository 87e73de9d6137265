"""Teacher-output cache (``teacher.cache=true``): the frozen teacher's outputs on the training set, computed once.

A distillation step runs the teacher forward on every batch, every epoch, every run; its outputs on a fixed
training set never change. With the cache, one pass over the training set (in order, no gradients) stores
what the configured loss terms read:

* ``logits`` (N, C) float32 — or, with ``teacher.cache_top_k=k``, the k largest logits and their indices plus
  the row's log-sum-exp, for label sets or vocabularies too large to store densely (see :func:`dense_logits`);
* the ``hidden_states`` layers that hidden-state terms map to, the ``attentions`` layers of attention terms
  that read Hugging Face's probabilities, and the query / key / value projections that hooked attention terms
  (TinyBERT's scores, MiniLM's relations) capture — in ``teacher.cache_dtype`` (float16 by default), each
  example's real tokens only (no padding is stored).

Files are ``.npy`` arrays read memory-mapped, so a cache larger than RAM works. The folder's name is a hash of
everything the outputs depend on: the teacher's weights and attention implementation, every training row's
token ids, mask and segment ids (so the tokenizer, max length, subset and augmentation are in it), and which
outputs are stored; any change makes a new entry. An entry is written in a temporary folder and renamed into
place when complete (a killed caching pass leaves no half cache). Before caching, the run states its size and
refuses one larger than ``teacher.cache_max_gb`` or the free disk, with one sentence, before any work.

A run whose teacher outputs change from epoch to epoch (tokens masked afresh each epoch, a teacher in training
mode) or whose batches are padded on the left says so in one line and runs the teacher live.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from distill.data.tasks import MODEL_INPUTS
from distill.errors import ConfigError
from distill.losses.capture import HookedTerm

log = logging.getLogger("distill")

DTYPES = {"float16": np.float16, "float32": np.float32}
TAILS = ("bucket", "renormalize")
META = "meta.json"


@dataclass
class CacheSpec:
    """Which teacher outputs a cache holds. ``hidden`` indexes ``hidden_states`` (0 = embeddings); ``attentions``
    are 1-based layers; ``captures`` are ``(layer, projection)`` pairs of hooked terms."""

    hidden: tuple[int, ...] = ()
    attentions: tuple[int, ...] = ()
    captures: tuple[tuple[int, str], ...] = ()
    widths: dict = field(default_factory=dict, repr=False)  # (layer, projection) -> its output width
    top_k: int | None = None
    dtype: str = "float16"
    tail: str = "bucket"
    hooked: list = field(default_factory=list, repr=False)  # the HookedTerms whose teacher captures are filled

    def as_dict(self) -> dict:
        return {"hidden": list(self.hidden), "attentions": list(self.attentions),
                "captures": [list(c) for c in self.captures], "top_k": self.top_k, "dtype": self.dtype,
                "tail": self.tail}


def check_settings(tcfg) -> None:
    """The ``teacher.cache*`` keys: one sentence naming the key and what is allowed."""
    enabled, top_k = tcfg.get("cache", False), tcfg.get("cache_top_k")
    if not isinstance(enabled, bool):
        raise ConfigError(f"teacher.cache={enabled!r} must be true or false.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"teacher.cache_top_k={top_k!r} must be a whole number >= 1, or null to store all logits.")
    if tcfg.get("cache_dtype", "float16") not in DTYPES:
        raise ConfigError(f"teacher.cache_dtype={tcfg.get('cache_dtype')!r} is not allowed; use float16 or float32.")
    if tcfg.get("cache_tail", "bucket") not in TAILS:
        raise ConfigError(f"teacher.cache_tail={tcfg.get('cache_tail')!r} is not allowed; use {' or '.join(TAILS)}.")
    limit = tcfg.get("cache_max_gb", 4.0)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        raise ConfigError(f"teacher.cache_max_gb={limit!r} must be a positive number of gigabytes.")


def cache_spec(objective, student, teacher, tcfg) -> CacheSpec:
    """What the objective's terms read from the teacher, resolved to layers for these two models."""
    s_depth, t_depth = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    hidden, attentions, captures, widths, hooked = set(), set(), set(), {}, []
    for term in objective.parts.values():
        need = set(getattr(term, "requires", ()))
        if "hidden_states" in need:
            pick = getattr(term, "teacher_layers", None)
            hidden |= set(pick(s_depth, t_depth)) if pick else set(range(t_depth + 1))
        if "attentions" in need:
            pick = getattr(term, "teacher_layers", None)
            attentions |= set(pick(s_depth, t_depth)) if pick else set(range(1, t_depth + 1))
        if isinstance(term, HookedTerm) and term.teacher_capture is not None:
            captures |= set(term.teacher_capture.keys())
            widths.update(term.teacher_capture.widths)
            hooked.append(term)
    return CacheSpec(tuple(sorted(hidden)), tuple(sorted(attentions)), tuple(sorted(captures)), widths,
                     tcfg.get("cache_top_k"), tcfg.get("cache_dtype", "float16"), tcfg.get("cache_tail", "bucket"),
                     hooked)


def _digest_model(model: torch.nn.Module) -> str:
    h = hashlib.sha1(type(model).__name__.encode())
    h.update(str(getattr(model.config, "_attn_implementation", None)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rows(dataset) -> dict[str, list[list[int]]]:
    """The model-input columns of every row, in order, as plain lists."""
    if hasattr(dataset, "with_format"):
        plain = dataset.with_format(None)
        return {k: [list(r) for r in plain[k]] for k in MODEL_INPUTS if k in plain.column_names}
    keys = [k for k in MODEL_INPUTS if k in dataset[0]]
    return {k: [list(dataset[i][k]) for i in range(len(dataset))] for k in keys}


def cache_key(teacher, rows: dict[str, list], spec: CacheSpec) -> str:
    h = hashlib.sha1(_digest_model(teacher).encode())
    for name in sorted(rows):
        h.update(name.encode())
        h.update(json.dumps(rows[name], separators=(",", ":")).encode())
    h.update(json.dumps(spec.as_dict(), sort_keys=True).encode())
    return h.hexdigest()[:20]


def estimate_bytes(lengths: np.ndarray, spec: CacheSpec, teacher) -> int:
    """Bytes the cache will take on disk for examples of these token ``lengths``."""
    cfg, item = teacher.config, np.dtype(DTYPES[spec.dtype]).itemsize
    n, tokens = len(lengths), int(lengths.sum())
    classes = int(cfg.num_labels)
    logits = n * (spec.top_k * 8 + 4) if spec.top_k and spec.top_k < classes else n * classes * 4
    per_token = len(spec.hidden) * int(cfg.hidden_size) + sum(spec.widths[c] for c in spec.captures)
    attention = len(spec.attentions) * int(cfg.num_attention_heads) * int((lengths.astype(np.int64) ** 2).sum())
    return logits + (tokens * per_token + attention) * item + (n + 1) * 8


def _fmt(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MB"


class _Writer:
    """Memory-mapped output arrays of a cache being recorded, filled batch by batch in example order."""

    def __init__(self, folder: Path, lengths: np.ndarray, spec: CacheSpec, teacher) -> None:
        cfg, self.spec, self.folder = teacher.config, spec, folder
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (N+1,)
        self.attn_offsets = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) ** 2)]) * cfg.num_attention_heads
        np.save(folder / "offsets.npy", self.offsets)
        n, tokens, dtype = len(lengths), int(self.offsets[-1]), DTYPES[spec.dtype]
        mm = np.lib.format.open_memmap
        k = spec.top_k if spec.top_k and spec.top_k < cfg.num_labels else None
        self.top_k = k
        if k:
            self.values = mm(folder / "topk_values.npy", "w+", np.float32, (n, k))
            self.indices = mm(folder / "topk_indices.npy", "w+", np.int32, (n, k))
            self.lse = mm(folder / "logsumexp.npy", "w+", np.float32, (n,))
        else:
            self.logits = mm(folder / "logits.npy", "w+", np.float32, (n, cfg.num_labels))
        self.hidden = {layer: mm(folder / f"hidden_{layer}.npy", "w+", dtype, (tokens, cfg.hidden_size)) for layer in spec.hidden}
        self.captures = {c: mm(folder / f"capture_{c[0]}_{c[1]}.npy", "w+", dtype, (tokens, spec.widths[c]))
                         for c in spec.captures}
        self.attn = {layer: mm(folder / f"attention_{layer}.npy", "w+", dtype, (int(self.attn_offsets[-1]),))
                     for layer in spec.attentions}

    def write(self, idx: np.ndarray, out, captured: dict, lengths: np.ndarray) -> None:
        logits = out.logits.float()  # (B, C)
        if self.top_k:
            values, indices = logits.topk(self.top_k, dim=-1)  # (B, k)
            self.values[idx], self.indices[idx] = values.numpy(), indices.numpy().astype(np.int32)
            self.lse[idx] = torch.logsumexp(logits, dim=-1).numpy()
        else:
            self.logits[idx] = logits.numpy()
        for row, (i, n) in enumerate(zip(idx, lengths)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            for layer, arr in self.hidden.items():
                arr[lo:hi] = out.hidden_states[layer][row, :n].numpy()
            for key, arr in self.captures.items():
                arr[lo:hi] = captured[key][row, :n].numpy()
            for layer, arr in self.attn.items():
                arr[self.attn_offsets[i]:self.attn_offsets[i + 1]] = out.attentions[layer - 1][row, :, :n, :n].reshape(-1).numpy()

    def flush(self) -> None:
        for arr in [*self.hidden.values(), *self.captures.values(), *self.attn.values(),
                    *[getattr(self, a) for a in ("logits", "values", "indices", "lse") if hasattr(self, a)]]:
            arr.flush()


def dense_logits(values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor, classes: int,
                 tail: str = "bucket") -> torch.Tensor:
    """(B, C) logits from the top-k ``values``/``indices`` (B, k) and the full row's log-sum-exp ``lse`` (B,).

    ``bucket``: the mass outside the top k (``1 − Σ_topk p``, exact from ``lse``) is spread evenly over the other
    ``C − k`` entries, so at temperature 1 the teacher's top-k probabilities and its tail mass are exact (at
    other temperatures the tail is treated as flat). ``renormalize``: the other entries are ``-inf``, i.e. the
    teacher's distribution renormalised over its top k (the soft-KL kernel handles ``-inf`` teacher entries).
    """
    b, k = values.shape
    if tail == "renormalize" or k >= classes:
        fill = torch.full((b, 1), float("-inf"), dtype=torch.float32, device=values.device)
    else:
        top_mass = torch.exp(values - lse[:, None]).sum(dim=-1).clamp(max=1.0)  # (B,)
        rest = (1.0 - top_mass).clamp(min=1e-30) / (classes - k)
        fill = (torch.log(rest) + lse)[:, None]  # (B, 1)
    out = fill.expand(b, classes).clone()
    return out.scatter_(1, indices.long(), values.float())  # (B, C)


class TeacherOutputs:
    """A finished cache entry, read memory-mapped; :meth:`replay` gives a batch's teacher outputs."""

    def __init__(self, folder: Path, spec: CacheSpec, teacher_config) -> None:
        self.folder, self.spec = folder, spec
        self.num_labels, self.depth = int(teacher_config.num_labels), int(teacher_config.num_hidden_layers)
        self.heads = int(teacher_config.num_attention_heads)
        load = lambda name: np.load(folder / name, mmap_mode="r")  # noqa: E731
        self.offsets = load("offsets.npy")
        self.top_k = (folder / "topk_values.npy").is_file()
        if self.top_k:
            self.values, self.indices, self.lse = load("topk_values.npy"), load("topk_indices.npy"), load("logsumexp.npy")
        else:
            self.logits = load("logits.npy")
        self.hidden = {layer: load(f"hidden_{layer}.npy") for layer in spec.hidden}
        self.captures = {c: load(f"capture_{c[0]}_{c[1]}.npy") for c in spec.captures}
        self.attn = {layer: load(f"attention_{layer}.npy") for layer in spec.attentions}
        lengths = np.diff(self.offsets)
        self.attn_offsets = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) ** 2)])

    def _tokens(self, arr: np.ndarray, idx: np.ndarray, width: int) -> torch.Tensor:
        """(B, T, W) float32 zero-padded rows of ``arr`` for examples ``idx`` (real tokens first: right padding)."""
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        pos = np.arange(width)
        real = pos[None, :] < lengths[:, None]  # (B, T)
        rows = np.where(real, self.offsets[idx][:, None] + pos[None, :], 0)
        out = torch.from_numpy(np.asarray(arr[rows.reshape(-1)], dtype=np.float32)).view(len(idx), width, -1)
        return out * torch.from_numpy(real)[..., None]

    def _attention(self, arr: np.ndarray, idx: np.ndarray, width: int, heads: int) -> torch.Tensor:
        out = torch.zeros(len(idx), heads, width, width)  # (B, h, T, T)
        for row, i in enumerate(idx):
            n = int(self.offsets[i + 1] - self.offsets[i])
            lo = int(self.attn_offsets[i]) * heads
            out[row, :, :n, :n] = torch.from_numpy(np.array(arr[lo:lo + heads * n * n], dtype=np.float32)).view(heads, n, n)
        return out

    def replay(self, batch: dict[str, torch.Tensor]):
        """The teacher's outputs for ``batch`` (its ``idx`` column), on the batch's device; fills hooked captures.

        ``hidden_states`` / ``attentions`` have the teacher's full length (layer maps resolve against it); layers
        no term reads are None."""
        idx = batch["idx"].cpu().numpy().astype(np.int64)
        width, device = batch["input_ids"].shape[1], batch["input_ids"].device
        if self.top_k:
            logits = dense_logits(torch.from_numpy(np.asarray(self.values[idx])), torch.from_numpy(np.asarray(self.indices[idx])),
                                  torch.from_numpy(np.asarray(self.lse[idx])), self.num_labels, self.spec.tail)
        else:
            logits = torch.from_numpy(np.asarray(self.logits[idx]))
        hidden = None
        if self.hidden:
            hidden = tuple(self._tokens(self.hidden[layer], idx, width).to(device) if layer in self.hidden else None
                           for layer in range(self.depth + 1))
        attentions = None
        if self.attn:
            attentions = tuple(self._attention(self.attn[layer], idx, width, self.heads).to(device) if layer in self.attn
                               else None for layer in range(1, self.depth + 1))
        captured = {key: self._tokens(arr, idx, width).to(device) for key, arr in self.captures.items()}
        for term in self.spec.hooked:
            for key in term.teacher_capture.keys():
                term.teacher_capture.put(*key, captured[key])
        return SimpleNamespace(logits=logits.to(device), hidden_states=hidden, attentions=attentions)


def why_not_cacheable(dm, teacher) -> str | None:
    """The reason this run's teacher outputs cannot be cached, or None."""
    reason = dm.teacher_output_refusal() if hasattr(dm, "teacher_output_refusal") else None
    if reason:
        return reason
    if teacher.training:
        return "the teacher is in training mode (dropout on), so its outputs differ every epoch"
    if getattr(dm.tokenizer, "padding_side", "right") != "right":
        return "the tokenizer pads on the left, and the cache stores each example's tokens from the first position"
    return None


@torch.no_grad()
def _record(folder: Path, dm, teacher, spec: CacheSpec, lengths: np.ndarray) -> None:
    writer = _Writer(folder, lengths, spec, teacher)
    dataset, bs = dm.train_set(), int(getattr(dm, "eval_batch_size", 64))
    need_hidden, need_attn = bool(spec.hidden), bool(spec.attentions)
    order = np.argsort(lengths, kind="stable")  # batches of similar length: little padding in the one teacher pass
    for start in range(0, len(dataset), bs):
        idx = order[start:start + bs]
        batch = dm.collate([dataset[int(i)] for i in idx])
        inputs = {k: batch[k].to(teacher.device) for k in MODEL_INPUTS if k in batch}
        out = teacher(**inputs, output_hidden_states=need_hidden, output_attentions=need_attn)
        captured = {}
        for term in spec.hooked:
            for key in term.teacher_capture.keys():
                captured[key] = term.teacher_capture.get(*key, pop=False).float().cpu()
            term.release()
        cpu = SimpleNamespace(logits=out.logits.float().cpu(),
                              hidden_states=[h.float().cpu() for h in out.hidden_states] if need_hidden else None,
                              attentions=[a.float().cpu() for a in out.attentions] if need_attn else None)
        writer.write(idx, cpu, captured, lengths[idx])
    writer.flush()


def prepare_teacher_outputs(tcfg, cache_root: Path, objective, student, teacher, dm) -> TeacherOutputs | None:
    """The cache of this run's teacher outputs (recorded now if absent), or None when it is off or unusable.

    Call after the objective has attached its hooks (hooked terms' captures are part of the cache)."""
    if not tcfg.get("cache", False) or not objective.needs_teacher:
        return None
    reason = why_not_cacheable(dm, teacher)
    if reason:
        log.info("teacher.cache: not used: %s; the teacher runs on every batch instead.", reason)
        return None
    spec = cache_spec(objective, student, teacher, tcfg)
    dm.setup("fit")
    rows = _rows(dm.train_set())
    lengths = np.array([len(r) for r in rows["input_ids"]], dtype=np.int64)
    final = cache_root / "teacher_outputs" / cache_key(teacher, rows, spec)
    size = estimate_bytes(lengths, spec, teacher)
    what = ", ".join(p for p in (
        "logits" if not spec.top_k else f"top-{spec.top_k} logits",
        spec.hidden and f"hidden states {list(spec.hidden)}", spec.attentions and f"attentions {list(spec.attentions)}",
        spec.captures and f"{len(spec.captures)} attention projections") if p)
    dm.index_train_set()
    if (final / META).is_file():
        log.info("teacher.cache: reusing %s (%s: %s)", final, _fmt(size), what)
        return TeacherOutputs(final, spec, teacher.config)
    limit = float(tcfg.get("cache_max_gb", 4.0)) * 2**30
    final.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(final.parent).free
    if size > limit or size > free:
        raise ConfigError(
            f"teacher.cache would take {_fmt(size)} ({what} of {len(lengths):,} examples, {int(lengths.sum()):,} tokens), "
            f"over teacher.cache_max_gb={tcfg.get('cache_max_gb', 4.0)} or the {_fmt(free)} free at {final.parent}; "
            "raise the limit, store fewer layers (the loss terms' layer maps), use teacher.cache_dtype=float16, or set teacher.cache=false.")
    log.info("teacher.cache: recording %s of %d examples (%d tokens, %s) at %s", what, len(lengths),
             int(lengths.sum()), _fmt(size), final)
    tmp = Path(tempfile.mkdtemp(prefix=".recording-", dir=final.parent))
    start = time.perf_counter()
    try:
        _record(tmp, dm, teacher, spec, lengths)
        log.info("teacher.cache: recorded in %.1f s", time.perf_counter() - start)
        (tmp / META).write_text(json.dumps({"examples": len(lengths), "tokens": int(lengths.sum()),
                                            "bytes": size, **spec.as_dict()}, indent=2))
        if final.exists():  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(final)  # one rename: the entry appears complete or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TeacherOutputs(final, spec, teacher.config)
