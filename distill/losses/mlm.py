"""DistilBERT's vocabulary-level loss terms at masked positions: soft KL to the teacher and masked-LM CE.

Both read logits (B, T, V) of masked-LM models and batches from :func:`distill.data.masking.mask_batch`
(``mlm_mask``, ``mlm_labels``). :class:`MaskedSoftKL` computes with the fused
:func:`~distill.kernels.softmax_kl` with ``mask=`` (its (B, T, V) hot path). With
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
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, positions: str = "masked", t2_scale: bool = True, backend: str = "auto") -> None:
        super().__init__()
        if positions not in ("masked", "tokens"):
            raise ConfigError(f"MaskedSoftKL.positions={positions!r} is not one of masked, tokens.")
        self.positions, self.t2_scale, self.backend = positions, t2_scale, backend

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        s, t = _vocab_logits(student, "MaskedSoftKL"), _vocab_logits(teacher, "MaskedSoftKL")  # (B, T, V) each
        if self.positions == "tokens":
            mask = token_mask(batch, tuple(s.shape[:2]), s.device)  # (B, T)
        elif "mlm_mask" in batch:
            mask = batch["mlm_mask"].to(s.device)  # (B, T)
        else:
            raise RuntimeError("MaskedSoftKL(positions=masked) needs batches from distill.data.masking.mask_batch (mlm_mask).")
        return softmax_kl(s, t, temperature, mask=mask, t2_scale=self.t2_scale, backend=self.backend)


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


