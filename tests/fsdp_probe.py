"""A callback for the FSDP test: at the end of training, while the models are still sharded, run the student
forward through the root FSDP unit (as Lightning runs its steps: every rank takes part in the gathers) on fixed
token ids and have rank 0 save the logits. Loaded by train.py with ``tests/`` on PYTHONPATH."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.strategies.strategy import _ForwardRedirection
from torch.distributed.fsdp import FullyShardedDataParallel

INPUT_IDS = [[2, 10, 20, 30, 11, 3], [2, 15, 25, 3, 0, 0]]  # [CLS] ... [SEP], the second padded


def probe_batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor(INPUT_IDS)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


class ShardedLogits(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        root = trainer.strategy.model
        assert isinstance(root, FullyShardedDataParallel)  # still sharded here: the gather comes at teardown
        pl_module.eval()
        with torch.no_grad():
            logits = _ForwardRedirection()(root, pl_module, "student_forward", probe_batch()).logits
        if trainer.is_global_zero:
            torch.save(logits, self.path)
