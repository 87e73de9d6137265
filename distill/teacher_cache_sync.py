"""Publishing a teacher-output cache entry once, atomically, and waiting for it on the other DDP ranks.

Rank 0 records an entry in a temporary folder beside its final place and renames it there when complete
(:func:`publish`); every rank then passes :func:`await_rank_zero` before reading it. With a process group (a
fit or a fine-tuned teacher earlier in the run started it) that is a barrier, which rank 0 reaches after
recording; before there is one (torchrun and SLURM start every rank at once, Lightning starts the group inside
the fit) the other ranks watch for the entry's ``meta.json``, which is written last. A long recording on slow
hardware under a process group needs the strategy's ``timeout`` (30 min by default) above the recording time.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

from distill.distributed import barrier, is_global_zero

log = logging.getLogger("distill")

META = "meta.json"
WAIT_S, POLL_S = 4 * 3600.0, 2.0  # how long another rank watches for rank 0's entry without a process group


def publish(final: Path, record) -> None:
    """Run ``record(folder)`` in a temporary folder beside ``final`` and rename it into place: the entry appears
    complete or not at all (a killed recording leaves neither an entry nor a temporary folder behind)."""
    tmp = Path(tempfile.mkdtemp(prefix=".recording-", dir=final.parent))
    start = time.perf_counter()
    try:
        record(tmp)
        log.info("teacher.cache: recorded in %.1f s", time.perf_counter() - start)
        if final.exists():  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def await_rank_zero(final: Path) -> None:
    """Every rank calls this once per entry, after rank 0 has recorded it (or found it): returns when rank 0's
    entry is there for the others to read (see the module docstring). A no-op in one process."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        return
    if is_global_zero() or (final / META).is_file():
        return
    log.info("teacher.cache: waiting for rank 0 to record %s", final)
    deadline = time.monotonic() + WAIT_S
    while not (final / META).is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"teacher.cache: rank 0 did not record {final} within {WAIT_S / 3600:.0f} h; see its log.")
        time.sleep(POLL_S)
