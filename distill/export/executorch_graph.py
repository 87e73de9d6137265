"""What makes a BERT student's graph run inside XNNPACK under ExecuTorch, and how to see what does not.

Measured on the ``tiny`` SST-2 student (docs/benchmarks/edge_export.md): with transformers' SDPA attention and
``nn.LayerNorm`` the int8 program had 228 of 458 nodes outside XNNPACK, split into 42 delegated pieces — every
LayerNorm (XNNPACK's partitioner has no layer norm), the masked-row fix-ups of SDPA's decomposition (``where``,
``any``, ``logical_not`` over B × heads × T × T per layer) and every reshape with a symbolic size ran in
ExecuTorch's portable reference kernels. :func:`xnnpack_friendly` and :func:`infer_one_dim` move them in.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class XnnpackLayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dim, written with XNNPACK-delegable ops (same numerics to ~1e-6).

    XNNPACK's ``mean`` takes 4-D inputs averaged over dims (2, 3) only, so (B, T, H) is viewed as
    (B, T, H, 1); every other op (sub, mul, add, rsqrt) has an XNNPACK kernel.
    """

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, float(norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, H)
        x4 = x.reshape(x.shape[0], x.shape[1], x.shape[2], 1)
        centred = x4 - x4.mean(dim=(2, 3), keepdim=True)
        var = (centred * centred).mean(dim=(2, 3), keepdim=True)
        return (centred * torch.rsqrt(var + self.eps)).reshape(x.shape) * self.weight + self.bias


def xnnpack_friendly(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with eager attention and :class:`XnnpackLayerNorm`s."""
    model = model if inplace else copy.deepcopy(model)
    if hasattr(model, "set_attn_implementation"):
        # eager attention is matmul / mul / add / softmax, all XNNPACK ops; SDPA's decomposition is not
        model.set_attn_implementation("eager")
    for name, module in list(model.named_modules()):
        if type(module) is nn.LayerNorm and len(module.normalized_shape) == 1:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, XnnpackLayerNorm(module))
    return model.eval()


def _is_view(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__name__", "").startswith("aten.view")


def infer_one_dim(gm: torch.fx.GraphModule) -> Any:
    """Edge pass: write each reshape whose output has exactly one symbolic size with that size as -1.

    XNNPACK lowers reshapes with integer sizes and at most one -1, never symbolic ones; with a dynamic
    sequence length every reshape in attention names it symbolically. Returns a ``PassResult``.
    """
    from torch.fx.passes.infra.pass_base import PassResult

    fixed = 0
    for node in gm.graph.nodes:
        if not (_is_view(node) and "val" in node.meta):
            continue
        shape = list(node.meta["val"].shape)
        symbolic = [i for i, d in enumerate(shape) if isinstance(d, torch.SymInt)]
        if len(symbolic) != 1:
            continue  # two symbolic sizes (the T x T scores) cannot be written with one -1
        new = [-1 if i == symbolic[0] else int(d) for i, d in enumerate(shape)]
        if list(node.args[1]) != new:
            node.args = (node.args[0], new, *node.args[2:])
            fixed += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return PassResult(gm, fixed > 0)


def delegation_summary(edge_manager: Any) -> dict[str, Any]:
    """How much of a lowered program runs in XNNPACK: delegated pieces and nodes, and the op types (with
    counts) left to the portable kernels (``getitem`` bookkeeping left out)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge_manager.exported_program().graph_module)
    table = info.get_operator_delegation_dataframe()
    outside = {
        str(r.op_type): int(r.occurrences_in_non_delegated_graphs)
        for r in table.itertuples()
        if r.occurrences_in_non_delegated_graphs and r.op_type not in ("Total", "getitem")
    }
    return {
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_nodes": int(info.num_delegated_nodes),
        "non_delegated_nodes": int(info.num_non_delegated_nodes),
        "outside_xnnpack": outside,
    }
