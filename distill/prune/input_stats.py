"""Input statistics of linear layers for magnitude pruning: per-feature norms (the ``wanda`` criterion) and
Gram matrices (refitting the weights a mask keeps, ``reconstruct``).

Sun et al. (2023, "A Simple and Effective Pruning Approach for Large Language Models", Wanda) score a weight
by its magnitude times the norm of the input feature it multiplies, ``|W_ij| * ||x_j||``: a large weight on a
feature that is nearly always small contributes little to the output, and LayerNorm gains make the input
features of a transformer's linear layers differ in scale by an order of magnitude, which plain magnitude
ignores. :class:`InputStats` records, with forward pre-hooks on the given layers and over every token
they see in training mode since the last :meth:`reset`, the sum of squares of every input feature or (with
``gram=True``) the whole ``XᵀX``, whose diagonal is that sum; the masks themselves stay
``torch.nn.utils.prune``'s (``importance_scores``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InputStats:
    """Running sums of squared inputs (or Gram matrices) of the layers given to :meth:`attach`."""

    def __init__(self, gram: bool = False) -> None:
        self.gram = gram
        self.sums: dict[nn.Linear, Tensor] = {}
        self.counts: dict[nn.Linear, int] = {}
        self.handles: list = []

    def attach(self, modules: list[nn.Linear]) -> None:
        self.detach()
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._record))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def reset(self) -> None:
        self.sums, self.counts = {}, {}

    @torch.no_grad()
    def _record(self, module: nn.Linear, inputs: tuple) -> None:
        if not module.training:  # validation batches (dev data) never shape the masks
            return
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
        stat = x.double().T @ x.double() if self.gram else x.float().square().sum(0)
        self.sums[module] = self.sums[module] + stat if module in self.sums else stat
        self.counts[module] = self.counts.get(module, 0) + x.shape[0]

    def rms(self, module: nn.Linear) -> Tensor | None:
        """Root-mean-square of each input feature of ``module`` since the last reset; None if it saw nothing."""
        if module not in self.sums:
            return None
        squares = self.sums[module].diagonal() if self.gram else self.sums[module]
        return (squares / self.counts[module]).sqrt().float()

    def gram_matrix(self, module: nn.Linear) -> Tensor | None:
        """``XᵀX`` (float64) of ``module``'s inputs since the last reset; None if it saw nothing or ``gram=False``."""
        return self.sums.get(module) if self.gram else None

    @torch.no_grad()
    def scores(self, modules: list[nn.Linear]) -> list[Tensor]:
        """``|W_ij| * rms(x_j)`` for each layer (``|W|`` alone for a layer that saw no input yet)."""
        out = []
        for m in modules:
            norms = self.rms(m)
            weight = m.weight.detach().abs()
            out.append(weight if norms is None else weight * norms.to(weight.dtype).unsqueeze(0))
        return out
