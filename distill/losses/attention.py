"""Attention-based intermediate losses: TinyBERT's score MSE, MiniLM's attention and value-relation KL.

Sources. By default every term recomputes what it needs from the query/key/value projections
captured by forward hooks (``requires`` contains ``"qkv"``; see :mod:`distill.losses.capture` for the
``attach`` protocol): ``scores = (Q·Kᵀ)·scaling`` per head in float32, exactly the pre-softmax scores
of BERT-style attention without the additive padding mask. This is exact, dropout-free, and works
with any ``attn_implementation``. The alternative ``source: attentions`` / ``source: log_probs`` reads
Hugging Face's ``attentions`` output instead (``requires`` ``"attentions"``, eager attention only);
note that HF returns probabilities *after* attention dropout, so in train mode the student's are
noisy and rows no longer sum to 1 — use it only with ``attention_probs_dropout_prob: 0``.

Why not recover scores from probabilities: ``log p = s − logsumexp(s)`` differs from the scores by a
per-row constant, which no loss on probabilities can see but an MSE on scores penalises. TinyBERT
(raw scores, padded keys set to 0) does penalise it, so the faithful choice is the hooks;
``source: log_probs`` is offered as a softmax-invariant variant: it compares log-probabilities
centred per row over the real keys, which equal the centred scores ``s − mean_keys(s)`` exactly.

Masking: only (query, key) pairs where both tokens are real count; KL rows are taken over real keys
and averaged over real query rows, heads and the batch (token-weighted, as MiniLM's 1/(A_h·|x|)).
Every sequence needs at least one real token. Heads: when student and teacher have the same number
of heads, heads are compared one to one; otherwise each side is averaged over its heads first
(scores are averaged; distributions are mixed, i.e. probabilities averaged).
Models whose scores carry extra terms (relative positions, DeBERTa) are not reproduced by the hooks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.errors import ConfigError
from distill.layer_map import as_layer_map
from distill.losses._common import check_reduction, f32, geometry, reduce_layers, token_mask
from distill.losses.capture import HookedTerm, split_heads

_MASKED = -1e9  # additive score for padded keys: exp() underflows to 0 in fp32/fp64, stays finite


def _scores(q: torch.Tensor, k: torch.Tensor, heads: int, scaling: float) -> torch.Tensor:
    """Pre-softmax scores from projections (B, T, W): (B, heads, T, T) in float32 (float64 kept)."""
    qh = split_heads(f32(q), heads)  # (B, h, T, d)
    kh = split_heads(f32(k), heads).to(qh.dtype)  # (B, h, T, d)
    return torch.matmul(qh, kh.transpose(-1, -2)) * scaling  # (B, h, T, T)


def _log_softmax_keys(scores: torch.Tensor, key_keep: torch.Tensor) -> torch.Tensor:
    """Log-softmax over real keys of (B, h, T, T) scores; padded keys get a huge finite negative value."""
    masked = scores.masked_fill(~key_keep[:, None, None, :], _MASKED)  # (B, h, T, T)
    return torch.log_softmax(masked, dim=-1)  # (B, h, T, T)


def _log_mix_heads(log_p: torch.Tensor) -> torch.Tensor:
    """Log of the head-averaged distribution: (B, h, T, T) -> (B, 1, T, T)."""
    return torch.logsumexp(log_p, dim=1, keepdim=True) - math.log(log_p.shape[1])  # (B, 1, T, T)


def _row_kl(log_t: torch.Tensor, log_s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over real query rows (and heads) of KL(t ‖ s) summed over real keys; inputs (B, h, T, T)."""
    key_keep = keep[:, None, None, :]  # (B, 1, 1, T)
    terms = torch.where(key_keep, log_t.exp() * (log_t - log_s), torch.zeros_like(log_t))  # (B, h, T, T)
    rows = terms.sum(dim=-1)  # (B, h, T)
    return rows.masked_select(keep[:, None, :]).mean()  # () over real queries, heads, batch


class _AttentionTerm(HookedTerm):
    """Layer map, source and head handling shared by the attention terms."""

    requires: frozenset[str] = frozenset({"qkv"})  # per instance: {"attentions"} for the HF-output sources
    _sources: tuple[str, ...] = ("scores",)

    default_layer_map: str = "last_k"

    def __init__(self, layer_map=None, source: str = "scores", layer_reduction: str = "sum", student_config=None,
                 teacher_config=None) -> None:
        super().__init__()
        name = type(self).__name__
        layer_map = self.default_layer_map if layer_map is None else layer_map
        if source not in self._sources:
            raise ConfigError(f"{name}.source={source!r} is not one of {', '.join(self._sources)}.")
        self.source = source
        self.hooked = source == "scores"
        self.requires = frozenset({"qkv"}) if self.hooked else frozenset({"attentions"})
        self.layer_map = as_layer_map(layer_map, key=f"{name}.layer_map")
        self.layer_reduction = check_reduction(layer_reduction, name)
        self.student_heads = geometry(student_config, "num_attention_heads", f"{name}.student_config")
        self.teacher_heads = geometry(teacher_config, "num_attention_heads", f"{name}.teacher_config")
        s_layers = geometry(student_config, "num_hidden_layers", f"{name}.student_config")
        t_layers = geometry(teacher_config, "num_hidden_layers", f"{name}.teacher_config")
        if s_layers is not None and t_layers is not None:
            self.pairs(s_layers, t_layers)  # validate the map at construction

    def pairs(self, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
        """(student, teacher) 1-based layer pairs; layer 0 (embeddings) has no attention."""
        return self.layer_map.resolve(student_layers, teacher_layers, min_layer=1)

    def teacher_layers(self, student_layers: int, teacher_layers: int) -> list[int]:
        """The teacher's 1-based attention layers this term reads (what a teacher-output cache must hold)."""
        return sorted({lt for _, lt in self.pairs(student_layers, teacher_layers)})

    def attach(self, student_model: nn.Module, teacher_model: nn.Module) -> None:
        if self.hooked:
            super().attach(student_model, teacher_model)

    def _layers(self, student_depth: int, teacher_depth: int) -> tuple[list[int], list[int]]:
        pairs = self.pairs(student_depth, teacher_depth)
        return [s for s, _ in pairs], [t for _, t in pairs]

    def _pairs_for(self, student, teacher) -> list[tuple[int, int]]:
        if self.hooked:
            depths = self.depths()
            if depths is None:
                raise RuntimeError(
                    f"{type(self).__name__} needs term.attach(student_model, teacher_model) before its first forward."
                )
            return self.pairs(*depths)
        if student.attentions is None or teacher.attentions is None:
            raise RuntimeError(
                f"{type(self).__name__} needs output_attentions=True (and eager attention) on both models."
            )
        return self.pairs(len(student.attentions), len(teacher.attentions))

    def _qk_scores(self, side: str, layer: int, shape: tuple[int, int]) -> torch.Tensor:
        q, heads, scaling = self.captured(side, layer, "query", shape)  # (B, T, W)
        k, _, _ = self.captured(side, layer, "key", shape)  # (B, T, W)
        return _scores(q, k, heads, scaling)  # (B, h, T, T)

    def _layer_pair(self, student, teacher, batch, ls: int, lt: int):
        """``(keep, a_s, a_t)`` for one layer pair: the (B, T) real-token mask and both sides' (B, h, T, T)
        pre-softmax scores (hooked Q/K) or float32 attention probabilities (``attentions`` output)."""
        if self.hooked:
            shape = tuple(batch["input_ids"].shape[:2])
            keep = token_mask(batch, shape, student.logits.device)  # (B, T)
            a_s = self._qk_scores("student", ls, shape)  # (B, h_s, T, T)
            return keep, a_s, self._qk_scores("teacher", lt, shape).to(a_s.dtype)  # (B, h_t, T, T)
        p_s = f32(student.attentions[ls - 1])  # (B, h_s, T, T)
        keep = token_mask(batch, (p_s.shape[0], p_s.shape[-1]), p_s.device)  # (B, T)
        return keep, p_s, f32(teacher.attentions[lt - 1]).to(p_s.dtype)  # (B, h_t, T, T)


class AttentionScoreMSE(_AttentionTerm):
    """TinyBERT's attention loss: ``Σ_pairs mean (A_s − A_t)²`` over heads and real (query, key) pairs.

    ``A`` are pre-softmax scores (``source: scores``, hooks, requires ``qkv``; default) or row-centred
    log-probabilities (``source: log_probs``, requires ``attentions``). ``layer_map`` defaults to
    ``uniform``; ``layer_reduction`` ``sum`` (TinyBERT) or ``mean``.
    """

    _sources = ("scores", "log_probs")
    _names = ("query", "key")

    default_layer_map = "uniform"

    def _centred_log_probs(self, probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """log p − mean over real keys of log p, for (B, h, T, T) probabilities."""
        p = f32(probs)  # (B, h, T, T)
        log_p = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))  # (B, h, T, T)
        key_keep = keep[:, None, None, :]  # (B, 1, 1, T)
        log_p = torch.where(key_keep, log_p, torch.zeros_like(log_p))  # (B, h, T, T)
        mean = log_p.sum(-1, keepdim=True) / key_keep.sum(-1, keepdim=True)  # (B, h, T, 1)
        return log_p - mean  # (B, h, T, T)

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        losses = []
        for ls, lt in self._pairs_for(student, teacher):
            keep, a_s, a_t = self._layer_pair(student, teacher, batch, ls, lt)  # (B, T), (B, h, T, T) x 2
            if not self.hooked:  # probabilities -> row-centred log-probabilities
                a_s, a_t = self._centred_log_probs(a_s, keep), self._centred_log_probs(a_t, keep)
            if a_s.shape[1] != a_t.shape[1]:
                a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)  # (B, 1, T, T) each
            pair_keep = keep[:, None, :, None] & keep[:, None, None, :]  # (B, 1, T, T)
            losses.append((a_s - a_t).pow(2).masked_select(pair_keep).mean())  # ()
        self.release()
        return reduce_layers(losses, self.layer_reduction)


class AttentionKL(_AttentionTerm):
    """MiniLM's self-attention distribution transfer: KL(A_t ‖ A_s) per real query row, last layer by default.

    ``source: scores`` (hooks, requires ``qkv``; default) recomputes the softmax from Q/K in float32;
    ``source: attentions`` reads HF's probabilities (requires ``attentions``; see the dropout caveat in the
    module docstring). ``layer_map`` defaults to ``last_k`` (k = 1).
    """

    _sources = ("scores", "attentions")
    _names = ("query", "key")

    default_layer_map = "last_k"

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        losses = []
        for ls, lt in self._pairs_for(student, teacher):
            keep, a_s, a_t = self._layer_pair(student, teacher, batch, ls, lt)  # (B, T), (B, h, T, T) x 2
            if self.hooked:  # scores -> log-softmax over real keys
                log_s, log_t = _log_softmax_keys(a_s, keep), _log_softmax_keys(a_t, keep)
            else:  # probabilities -> log-probabilities
                tiny = torch.finfo(a_s.dtype).tiny
                log_s, log_t = torch.log(a_s.clamp_min(tiny)), torch.log(a_t.clamp_min(tiny))
            if log_s.shape[1] != log_t.shape[1]:
                log_s, log_t = _log_mix_heads(log_s), _log_mix_heads(log_t)  # (B, 1, T, T) each
            losses.append(_row_kl(log_t, log_s, keep))  # ()
        self.release()
        return reduce_layers(losses, self.layer_reduction)


class ValueRelationKL(_AttentionTerm):
    """MiniLM's value-relation transfer: KL(VR_t ‖ VR_s), ``VR = softmax(V·Vᵀ/√d)`` per head, over real keys.

    Needs the value projections (hooks, requires ``qkv``). ``relation_heads``: None splits each side's
    values into its own number of attention heads (MiniLM; the counts must then be equal), an int
    splits both sides' values into that many relation heads (MiniLMv2 style; must divide both widths),
    which also lets student and teacher differ in heads. ``layer_map`` defaults to ``last_k`` (k = 1).
    """

    _names = ("value",)

    def __init__(
        self,
        layer_map="last_k",
        relation_heads: int | None = None,
        layer_reduction: str = "sum",
        student_config=None,
        teacher_config=None,
    ) -> None:
        super().__init__(layer_map, "scores", layer_reduction, student_config, teacher_config)
        name = type(self).__name__
        if relation_heads is not None:
            if isinstance(relation_heads, bool) or not isinstance(relation_heads, int) or relation_heads < 1:
                raise ConfigError(
                    f"{name}.relation_heads={relation_heads!r} must be a positive whole number."
                )
            for side, config in (("student", student_config), ("teacher", teacher_config)):
                hidden = geometry(config, "hidden_size", f"{name}.{side}_config")
                if hidden is not None and hidden % relation_heads:
                    raise ConfigError(
                        f"{name}.relation_heads={relation_heads} does not divide the {side} width {hidden}."
                    )
        elif self.student_heads and self.teacher_heads and self.student_heads != self.teacher_heads:
            raise ConfigError(
                f"{name} needs equal head counts (student {self.student_heads}, teacher {self.teacher_heads}); "
                "set relation_heads to split both sides' values into the same number of relation heads."
            )
        self.relation_heads = relation_heads

    def _relation(self, side: str, layer: int, shape: tuple[int, int], keep: torch.Tensor) -> torch.Tensor:
        v, heads, _ = self.captured(side, layer, "value", shape)  # (B, T, W)
        heads = self.relation_heads or heads
        vh = split_heads(f32(v), heads)  # (B, r, T, d)
        scores = torch.matmul(vh, vh.transpose(-1, -2)) / math.sqrt(vh.shape[-1])  # (B, r, T, T)
        return _log_softmax_keys(scores, keep)  # (B, r, T, T)

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        shape = tuple(batch["input_ids"].shape[:2])
        keep = token_mask(batch, shape, student.logits.device)  # (B, T)
        losses = []
        for ls, lt in self._pairs_for(student, teacher):
            log_s = self._relation("student", ls, shape, keep)  # (B, r_s, T, T)
            log_t = self._relation("teacher", lt, shape, keep).to(log_s.dtype)  # (B, r_t, T, T)
            if log_s.shape[1] != log_t.shape[1]:
                raise ConfigError(
                    f"{type(self).__name__} got {log_s.shape[1]} student and {log_t.shape[1]} teacher heads; "
                    "set relation_heads to split both sides' values into the same number of relation heads."
                )
            losses.append(_row_kl(log_t, log_s, keep))  # ()
        self.release()
        return reduce_layers(losses, self.layer_reduction)
