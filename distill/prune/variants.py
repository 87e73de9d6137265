"""Producers of the report's pruning rows, chosen in config by ``_target_`` (``quant.variants``; the magnitude
pruning preset adds its row there: ``conf/prune/magnitude.yaml``).

``variant(ctx) -> ModelEntry`` as in :mod:`distill.quant.variants`: export, load back, return the entry.
"""

from __future__ import annotations

import logging

from transformers import AutoModelForSequenceClassification

from distill.prune.neuron import BEFORE
from distill.prune.sparse_export import FORMAT, load_sparse, save_sparse
from distill.report.entry import ModelEntry, VariantContext
from distill.report.timing import size_on_disk_mb

log = logging.getLogger("distill")


class BeforePruning:
    """The student as it was just before neuron pruning removed its neurons (saved by
    :class:`distill.prune.neuron.NeuronPruning` as ``<fit folder>/before_pruning/``), scored, sized and timed
    in the same report as the pruned student, so the cost and the speed-up of the pruning read side by side.
    ``None`` (no row) when no fit of the run pruned (e.g. the callback was switched off)."""

    def __init__(self, name: str = "student_before_pruning") -> None:
        self.name = name

    def __call__(self, ctx: VariantContext) -> ModelEntry | None:
        run_dir = ctx.out_dir.parent
        found = sorted(run_dir.glob(f"**/{BEFORE}/config.json"))
        if not found:
            log.info("%s: no fit of this run pruned neurons, so the report has no %s row.", self.name, self.name)
            return None
        folder = found[0].parent
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        notes = {"what": "the student before neuron pruning (end of the fit before the recovery)",
                 "folder": str(folder.relative_to(run_dir))}
        return ModelEntry(self.name, model, folder, format="pytorch", precision="fp32", runtime="torch", notes=notes)


class SparseExport:
    """The fp32 student's weights stored sparsely (bitmask + non-zero values, :mod:`distill.prune.sparse_export`)
    in ``<ctx.out_dir>/sparse/``, loaded back and reported: its size on disk is the compressed file's, and it is
    scored and timed as loaded, a dense model on dense kernels (the zeros make no kernel faster here).
    """

    def __init__(self, name: str = "student_sparse", folder: str = "sparse") -> None:
        self.name, self.folder = name, folder

    def __call__(self, ctx: VariantContext) -> ModelEntry:
        folder = ctx.out_dir / self.folder
        saved = save_sparse(ctx.student, folder, ctx.tokenizer)
        model = load_sparse(folder)
        notes = {"layout": f"1-bit mask + non-zero fp32 values in safetensors, {FORMAT}", "dense_size_mb": size_on_disk_mb(ctx.student_dir),
                 "sparse_tensors": saved["sparse_tensors"], "tensors": saved["tensors"],
                 "load": f"distill.prune.sparse_export.load_sparse('{folder}')",
                 "kernels": "dense (weights made dense on load)"}
        return ModelEntry(self.name, model, saved["path"], format="safetensors-bitmask", precision="fp32",
                          runtime="torch", notes=notes)
