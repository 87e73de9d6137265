"""A callback for fault tests: SIGKILL the whole job (every rank: the process group the test started it in)
once, right after a given training step, as a crash or a pre-empted node would. Loaded by train.py through
``+callbacks.kill._target_=kill_job.KillJobAfterStep`` with ``tests/`` on PYTHONPATH.

It fires once per ``marker`` file (written before the kill), so the same command run again resumes past that
step, as a user's rerun would; it kills from rank 0 only and never from a run resumed past ``step``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillJobAfterStep(L.Callback):
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero and not self.marker.exists():
            self.marker.write_text(str(self.step))
            os.killpg(os.getpgid(0), signal.SIGKILL)
