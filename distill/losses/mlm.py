"""DistilBERT's vocabulary-level loss terms at masked positions: soft KL to the teacher and masked-LM CE.

Both read logits (B, T, V) of masked-LM models and batches from :func:`distill.data.masking.mask_batch`
(``mlm_mask``, ``mlm_labels``). :class:`MaskedSoftKL` computes with the fused
:func:`~distill.kernels.softmax_kl` with ``mask=`` (its (B, T, V) hot path); from the teacher-output cache it
reads the teacher's logits at the selected positions only (``position_logits`` (M, V), dense or rebuilt from the
top k of each position: :mod:`distill.teacher_cache_topk`). With
:class:`~distill.losses.HiddenCosine` as a term they make DistilBERT's triple loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.data.masking import IGNORE
from distill.errors import ConfigError
from distill.kernels.softmax_kl import softmax_kl
from distill.losses._common import token_mask


def _vocab_logits(output, owner: str) -> torch.Tensor:
    logits = output.logits  # (B, T, V)
    if logits.dim() != 3:
        raise ConfigError(f"{owner} needs masked-LM models (logits (B, T, V)); got logits of shape {tuple(logits.shape)}.")
    return logits


class MaskedSoftKL(nn.Module):
    """``T²·KL(softmax(t/T) ‖ softmax(s/T))`` over the vocabulary, averaged over the selected positions.

    ``positions: masked`` (DistilBERT's ``restrict_ce_to_mask``) uses the batch's ``mlm_mask``;
    ``tokens`` every real token. Logits (B, T, V); computed by :func:`softmax_kl` with ``mask=`` (B, T)
    and ``backend`` (``auto``: Triton on CUDA, the chunked PyTorch path on CPU). A batch with no
    selected position gives 0.

    A teacher output with ``position_logits`` (M, V) (the teacher-output cache stores the teacher's logits at
    :attr:`logit_positions` only) gives the teacher's rows at the M selected positions, in the order
    ``student_logits[mask]`` takes them; the loss is then the same KL over those rows. With top-k caching a
    row's tail is one flat bucket or dropped (``teacher.cache_tail``), exact at k = V.
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, positions: str = "masked", t2_scale: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if positions not in ("masked", "tokens"):
            raise ConfigError(f"MaskedSoftKL.positions={positions!r} is not one of masked, tokens.")
        self.positions, self.t2_scale, self.backend = positions, t2_scale, backend

    @property
    def logit_positions(self) -> str:
        """Where this term reads the teacher's vocabulary logits (``masked`` or ``tokens``): all the cache stores."""
        return self.positions

    def select(self, batch: dict[str, torch.Tensor], shape: tuple[int, int], device) -> torch.Tensor:
        """(B, T) bool: the positions this term compares (the batch's ``mlm_mask``, or every real token)."""
        if self.positions == "tokens":
            return token_mask(batch, shape, device)
        if "mlm_mask" not in batch:
            raise RuntimeError("MaskedSoftKL(positions=masked) needs batches from distill.data.masking.mask_batch (mlm_mask).")
        return batch["mlm_mask"].to(device).bool()

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        s = _vocab_logits(student, "MaskedSoftKL")  # (B, T, V)
        mask = self.select(batch, tuple(s.shape[:2]), s.device)  # (B, T)
        picked = getattr(teacher, "position_logits", None)  # (M, V) from the teacher-output cache, or None
        if picked is None:
            t = _vocab_logits(teacher, "MaskedSoftKL")  # (B, T, V)
            return softmax_kl(s, t, temperature, mask=mask, t2_scale=self.t2_scale, backend=self.backend)
        rows = s[mask]  # (M, V), the order of the cached rows
        if rows.shape != picked.shape:
            raise RuntimeError(f"MaskedSoftKL: {rows.shape[0]} selected positions but {picked.shape[0]} cached teacher rows.")
        if rows.shape[0] == 0:
            return s.sum() * 0.0
        return softmax_kl(rows, picked.to(s.device), temperature, t2_scale=self.t2_scale, backend=self.backend)


class MaskedLMLoss(nn.Module):
    """Masked-LM cross-entropy of the student against the original ids (``mlm_labels``, -100 ignored).

    Logits (B, T, V); only the M labelled rows are gathered before the float32 cross-entropy. A batch
    without masked positions gives 0.
    """

    requires: frozenset[str] = frozenset()

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        logits = _vocab_logits(student, "MaskedLMLoss")  # (B, T, V)
        if "mlm_labels" not in batch:
            raise RuntimeError("MaskedLMLoss needs batches from distill.data.masking.mask_batch (mlm_labels).")
        labels = batch["mlm_labels"].to(logits.device)  # (B, T)
        keep = labels != IGNORE  # (B, T)
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep].float(), labels[keep])  # (M, V), (M,) -> ()


