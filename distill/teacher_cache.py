"""Teacher-output cache (``teacher.cache=true``): the frozen teacher's outputs on the training set, computed once.

A distillation step runs the teacher forward on every batch, every epoch, every run; its outputs on a fixed
training set never change. With the cache, one pass over the training set (in order, no gradients) stores
what the configured loss terms read:

* ``logits`` (N, C) float32 — or, with ``teacher.cache_top_k=k``, the k largest logits and their indices plus
  the row's log-sum-exp, for label sets or vocabularies too large to store densely (see
  :mod:`distill.teacher_cache_topk`); for a term that reads the teacher's vocabulary logits at some token
  positions (``logit_positions``: the masked positions of masked-LM distillation), those positions' logits only,
  one row per position, dense or top-k the same way;
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
mode) or whose batches are padded on the left says so in one line and runs the teacher live; with static masking
(``data.static_masking=true``) the masked ids are part of every row, so of the key, and the cache is used.

Under DDP rank 0 records the entry and the other ranks wait for it (a barrier once the process group is up, else
they watch for the entry's files), then read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from distill.data.tasks import MODEL_INPUTS
from distill.distributed import is_global_zero
from distill.errors import ConfigError
from distill.losses.capture import HookedTerm
from distill.teacher_cache_sync import META, await_rank_zero, publish
from distill.teacher_cache_topk import (
    TAILS,
    LogitReader,
    LogitWriter,
    dense_logits,
    logit_bytes,
    row_ranges,
    selected_counts,
)

__all__ = ["TAILS", "CacheSpec", "TeacherOutputs", "dense_logits", "prepare_teacher_outputs"]

log = logging.getLogger("distill")

DTYPES = {"float16": np.float16, "float32": np.float32}
KEY_COLUMNS = (*MODEL_INPUTS, "mlm_labels")  # static masks: the labels say which positions were chosen
POSITIONS = "positions_"  # file prefix of the logits at the token positions a term reads


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
    # a term reading the teacher's vocabulary logits at token positions (its ``logit_positions``, e.g. "masked"):
    # those positions' logits are stored instead of per-example logits; its ``select(batch, shape, device)``
    positions: str | None = None
    position_term: object = field(default=None, repr=False)

    def as_dict(self) -> dict:
        out = {"hidden": list(self.hidden), "attentions": list(self.attentions),
               "captures": [list(c) for c in self.captures], "top_k": self.top_k, "dtype": self.dtype,
               "tail": self.tail}
        return {**out, "positions": self.positions} if self.positions else out  # earlier keys stay valid


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
    positions = [t for t in objective.parts.values() if getattr(t, "logit_positions", None)]
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
                     hooked, positions[0].logit_positions if positions else None, positions[0] if positions else None)


def _digest_model(model: torch.nn.Module) -> str:
    h = hashlib.sha1(type(model).__name__.encode())
    h.update(str(getattr(model.config, "_attn_implementation", None)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rows(dataset) -> dict[str, list[list[int]]]:
    """The model-input columns (and static masks' labels) of every row, in order, as plain lists."""
    if hasattr(dataset, "with_format"):
        plain = dataset.with_format(None)
        return {k: [list(r) for r in plain[k]] for k in KEY_COLUMNS if k in plain.column_names}
    keys = [k for k in KEY_COLUMNS if k in dataset[0]]
    return {k: [list(dataset[i][k]) for i in range(len(dataset))] for k in keys}


def cache_key(teacher, rows: dict[str, list], spec: CacheSpec) -> str:
    h = hashlib.sha1(_digest_model(teacher).encode())
    for name in sorted(rows):
        h.update(name.encode())
        h.update(json.dumps(rows[name], separators=(",", ":")).encode())
    h.update(json.dumps(spec.as_dict(), sort_keys=True).encode())
    return h.hexdigest()[:20]


def estimate_bytes(lengths: np.ndarray, spec: CacheSpec, teacher, selected: np.ndarray | None = None) -> int:
    """Bytes the cache will take on disk for examples of these token ``lengths`` (and ``selected`` positions
    of each, with a position-level term)."""
    cfg, item = teacher.config, np.dtype(DTYPES[spec.dtype]).itemsize
    n, tokens = len(lengths), int(lengths.sum())
    if selected is None:
        logits = logit_bytes(n, int(cfg.num_labels), spec.top_k)
    else:
        logits = logit_bytes(int(selected.sum()), int(cfg.vocab_size), spec.top_k) + (n + 1) * 8
    per_token = len(spec.hidden) * int(cfg.hidden_size) + sum(spec.widths[c] for c in spec.captures)
    attention = len(spec.attentions) * int(cfg.num_attention_heads) * int((lengths.astype(np.int64) ** 2).sum())
    return logits + (tokens * per_token + attention) * item + (n + 1) * 8


def _fmt(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MB"


class _Writer:
    """Memory-mapped output arrays of a cache being recorded, filled batch by batch in example order."""

    def __init__(self, folder: Path, lengths: np.ndarray, spec: CacheSpec, teacher,
                 selected: np.ndarray | None = None) -> None:
        cfg, self.spec, self.folder = teacher.config, spec, folder
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (N+1,)
        self.attn_offsets = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) ** 2)]) * cfg.num_attention_heads
        np.save(folder / "offsets.npy", self.offsets)
        n, tokens, dtype = len(lengths), int(self.offsets[-1]), DTYPES[spec.dtype]
        mm = np.lib.format.open_memmap
        if selected is None:
            self.logits = LogitWriter(folder, "", n, int(cfg.num_labels), spec.top_k)
        else:  # one row per selected token position, example after example
            self.pos_offsets = np.concatenate([[0], np.cumsum(selected)]).astype(np.int64)  # (N+1,)
            np.save(folder / f"{POSITIONS}offsets.npy", self.pos_offsets)
            self.logits = LogitWriter(folder, POSITIONS, int(self.pos_offsets[-1]), int(cfg.vocab_size), spec.top_k)
        self.hidden = {layer: mm(folder / f"hidden_{layer}.npy", "w+", dtype, (tokens, cfg.hidden_size)) for layer in spec.hidden}
        self.captures = {c: mm(folder / f"capture_{c[0]}_{c[1]}.npy", "w+", dtype, (tokens, spec.widths[c]))
                         for c in spec.captures}
        self.attn = {layer: mm(folder / f"attention_{layer}.npy", "w+", dtype, (int(self.attn_offsets[-1]),))
                     for layer in spec.attentions}

    def write(self, idx: np.ndarray, out, captured: dict, lengths: np.ndarray) -> None:
        """``out.logits``: (B, C), or with a position-level term the (M, V) logits of the batch's selected
        positions, row-major (example by example, positions in order)."""
        rows = idx if self.spec.positions is None else row_ranges(self.pos_offsets, idx)
        if len(rows) != out.logits.shape[0]:
            raise RuntimeError(f"teacher.cache: {out.logits.shape[0]} selected positions in a batch whose rows "
                               f"hold {len(rows)}; the static masks changed between counting and recording.")
        self.logits.write(rows, out.logits)
        for row, (i, n) in enumerate(zip(idx, lengths)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            for layer, arr in self.hidden.items():
                arr[lo:hi] = out.hidden_states[layer][row, :n].numpy()
            for key, arr in self.captures.items():
                arr[lo:hi] = captured[key][row, :n].numpy()
            for layer, arr in self.attn.items():
                arr[self.attn_offsets[i]:self.attn_offsets[i + 1]] = out.attentions[layer - 1][row, :, :n, :n].reshape(-1).numpy()

    def flush(self) -> None:
        self.logits.flush()
        for arr in [*self.hidden.values(), *self.captures.values(), *self.attn.values()]:
            arr.flush()


class TeacherOutputs:
    """A finished cache entry, read memory-mapped; :meth:`replay` gives a batch's teacher outputs."""

    def __init__(self, folder: Path, spec: CacheSpec, teacher_config) -> None:
        self.folder, self.spec = folder, spec
        self.num_labels, self.depth = int(teacher_config.num_labels), int(teacher_config.num_hidden_layers)
        self.heads = int(teacher_config.num_attention_heads)
        load = lambda name: np.load(folder / name, mmap_mode="r")  # noqa: E731
        self.offsets = load("offsets.npy")
        if spec.positions:
            self.pos_offsets = load(f"{POSITIONS}offsets.npy")
            self.logits = LogitReader(folder, POSITIONS, int(teacher_config.vocab_size), spec.tail)
        else:
            self.logits = LogitReader(folder, "", self.num_labels, spec.tail)
        self.top_k = self.logits.top_k
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

    def _position_logits(self, batch: dict[str, torch.Tensor], idx: np.ndarray) -> torch.Tensor:
        """(M, V): the logits at the batch's selected positions, in the order ``student_logits[mask]`` takes them."""
        ids = batch["input_ids"]
        mask = self.spec.position_term.select(batch, tuple(ids.shape[:2]), torch.device("cpu"))  # (B, T)
        stored = self.pos_offsets[idx + 1] - self.pos_offsets[idx]
        if not np.array_equal(mask.sum(dim=1).numpy(), stored):
            raise RuntimeError("teacher.cache: a batch selects other positions than those recorded for its rows "
                               "(the static masks changed); delete the entry at " + str(self.folder))
        return self.logits.read(row_ranges(self.pos_offsets, idx))

    def replay(self, batch: dict[str, torch.Tensor]):
        """The teacher's outputs for ``batch`` (its ``idx`` column), on the batch's device; fills hooked captures.

        ``logits`` (B, C) — or, with a position-level term, ``position_logits`` (M, V) at the M selected positions
        (and ``logits`` None); ``hidden_states`` / ``attentions`` have the teacher's full length (layer maps
        resolve against it); layers no term reads are None."""
        idx = batch["idx"].cpu().numpy().astype(np.int64)
        width, device = batch["input_ids"].shape[1], batch["input_ids"].device
        logits = positions = None
        if self.spec.positions:
            positions = self._position_logits(batch, idx).to(device)
        else:
            logits = self.logits.read(idx).to(device)
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
        return SimpleNamespace(logits=logits, position_logits=positions, hidden_states=hidden, attentions=attentions)


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
def _record(folder: Path, dm, teacher, spec: CacheSpec, lengths: np.ndarray, selected: np.ndarray | None = None) -> None:
    writer = _Writer(folder, lengths, spec, teacher, selected)
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
        logits = out.logits
        if spec.positions:  # the selected positions only, before the (B, T, V) logits leave the device
            logits = logits[spec.position_term.select(batch, tuple(logits.shape[:2]), logits.device)]  # (M, V)
        cpu = SimpleNamespace(logits=logits.float().cpu(),
                              hidden_states=[h.float().cpu() for h in out.hidden_states] if need_hidden else None,
                              attentions=[a.float().cpu() for a in out.attentions] if need_attn else None)
        writer.write(idx, cpu, captured, lengths[idx])
    writer.flush()


def prepare_teacher_outputs(tcfg, cache_root: Path, objective, student, teacher, dm) -> TeacherOutputs | None:
    """The cache of this run's teacher outputs (recorded now if absent), or None when it is off or unusable.

    Call after the objective has attached its hooks (hooked terms' captures are part of the cache). Under DDP
    rank 0 records and every other rank waits for it (:func:`await_rank_zero`), then reads the same entry."""
    if not tcfg.get("cache", False) or not objective.needs_teacher:
        return None
    reason = why_not_cacheable(dm, teacher)
    spec = cache_spec(objective, student, teacher, tcfg) if not reason else None
    dm.setup("fit")
    rows = _rows(dm.train_set())
    if spec is not None and spec.positions == "masked" and "mlm_labels" not in rows:
        reason = "the loss reads the teacher's logits at masked positions and the rows carry no static masks"
    if reason:
        log.info("teacher.cache: not used: %s; the teacher runs on every batch instead.", reason)
        return None
    lengths = np.array([len(r) for r in rows["input_ids"]], dtype=np.int64)
    selected = selected_counts(rows, spec.positions) if spec.positions else None
    final = cache_root / "teacher_outputs" / cache_key(teacher, rows, spec)
    size = estimate_bytes(lengths, spec, teacher, selected)
    logits = "logits" if not spec.top_k else f"top-{spec.top_k} logits"
    what = ", ".join(p for p in (
        logits if selected is None else f"{logits} at {int(selected.sum()):,} {spec.positions} positions",
        spec.hidden and f"hidden states {list(spec.hidden)}", spec.attentions and f"attentions {list(spec.attentions)}",
        spec.captures and f"{len(spec.captures)} attention projections") if p)
    dm.index_train_set()

    reused = (final / META).is_file()
    if not reused:  # every rank checks, before any work: an entry too large stops them all alike
        final.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(final.parent).free
        if size > float(tcfg.get("cache_max_gb", 4.0)) * 2**30 or size > free:
            raise ConfigError(
                f"teacher.cache would take {_fmt(size)} ({what} of {len(lengths):,} examples, {int(lengths.sum()):,} tokens), "
                f"over teacher.cache_max_gb={tcfg.get('cache_max_gb', 4.0)} or the {_fmt(free)} free at {final.parent}; "
                "raise the limit, store fewer layers (the loss terms' layer maps), use teacher.cache_dtype=float16 or "
                "teacher.cache_top_k, or set teacher.cache=false.")

    def record_if_absent() -> None:
        if (final / META).is_file():
            return
        log.info("teacher.cache: recording %s of %d examples (%d tokens, %s) at %s", what, len(lengths),
                 int(lengths.sum()), _fmt(size), final)

        def record(tmp: Path) -> None:
            _record(tmp, dm, teacher, spec, lengths, selected)
            (tmp / META).write_text(json.dumps({"examples": len(lengths), "tokens": int(lengths.sum()),
                                                "bytes": size, **spec.as_dict()}, indent=2))

        publish(final, record)

    if is_global_zero():
        record_if_absent()
    await_rank_zero(final)
    record_if_absent()  # only a rank whose cache folder rank 0 does not share (node-local disks) records here
    if reused:
        log.info("teacher.cache: reusing %s (%s: %s)", final, _fmt(size), what)
    return TeacherOutputs(final, spec, teacher.config)
