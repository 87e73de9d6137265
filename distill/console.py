"""What a run prints: its own messages, its progress and the report, plus the library warnings that matter.

* :func:`setup_console` — once at the start of a run (idempotent): ``[distill] ...`` lines on stderr, Lightning's
  device banner at most once per process, no litlogger advertisement, the named library deprecation notices
  dropped, and no tqdm bars from Hugging Face libraries when stderr is not a terminal.
* :func:`seed_everything` — Lightning's, saying "Seed set to N" the first time in the process only.
* :func:`quiet_load` — around ``from_pretrained`` where a new head is expected: hides transformers'
  load report (and its progress bar) when it lists only the expected head; any other key is still reported.
* :class:`LineProgress` / :func:`progress_bar` — one plain line every N steps or seconds and per epoch when
  stdout is not a terminal (log files, CI, nohup); Lightning's RichProgressBar on a terminal.

Every filter names its source logger or module and the message it drops; nothing is silenced wholesale.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar

log = logging.getLogger("distill")

# Lightning's ``rank_zero_info`` logs through whichever of these the last imported Lightning package bound.
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning_utilities.core.rank_zero")
SEED_LOGGER = "lightning.fabric.utilities.seed"
BANNER_PREFIXES = ("GPU available:", "TPU available:", "HPU available:", "IPU available:", "MPS available:")
DROPPED_INFO = (
    "💡 Tip: For seamless cloud logging",  # litlogger advert, connectors/logger_connector/logger_connector.py
    "Loading `train_dataloader` to estimate number of stepping batches.",  # trainer.py, an internal step
)
# (logger, message regex) of library log records that are noise in every run of this project.
DROPPED_RECORDS = (
    # torchao's CUDA-only kernels fail to load on a CPU build; the int8 paths used here don't need them
    ("torchao", r"^Failed to load .*torchao/_C"),
    # torchao registers its enums with torch's pytree at import; torch deprecated that (torchao's to fix)
    ("torch.utils._pytree", r"is an Enum subclass and is now natively supported"),
    # datasets announces at import which array libraries it found (JAX arrives with the LiteRT extra)
    ("datasets", r"^(JAX|PyTorch|TensorFlow|Polars) version .* available"),
)
# (category, message regex, module regex) of library warnings that say nothing to a user of distill.
DROPPED_WARNINGS = (
    # Lightning builds a LeafSpec in its own pytree helper; torch deprecated the class
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    # torchdata 0.11's StatefulDataLoader calls a torch API that torch 2.13 deprecated (theirs to fix)
    (UserWarning, r"'set_vital' is deprecated", r"torchdata\..*"),
    # general-distillation phases train on unlabeled text by design: no validation set to skip
    (UserWarning, r"You defined a `validation_step` but have no `val_dataloader`", r"lightning\.pytorch\.trainer"),
)
LINE_FORMAT = "[distill] %(message)s"


class OncePerProcess(logging.Filter):
    """Pass a record the first time its message is seen; later identical messages are dropped.

    ``prefixes`` limits the filter to messages starting with one of them (others always pass); ``drop`` lists
    message prefixes that never pass.
    """

    def __init__(self, prefixes: tuple[str, ...] | None = None, drop: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.drop = drop
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.drop):
            return False
        if self.prefixes is not None and not message.startswith(self.prefixes):
            return True
        if message in self.seen:
            return False
        self.seen.add(message)
        return True

    def reset(self) -> None:
        self.seen.clear()


class DropMatching(logging.Filter):
    """Drop records whose message matches ``pattern`` (a regex)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


BANNER = OncePerProcess(BANNER_PREFIXES, drop=DROPPED_INFO)
SEED_MESSAGES = OncePerProcess()  # "Seed set to N" from any caller, each N once
_DROPPED = {logger: DropMatching(pattern) for logger, pattern in DROPPED_RECORDS}
_first_seed = True


def _add_filter(target: logging.Logger | logging.Handler, filt: logging.Filter) -> None:
    if filt not in target.filters:
        target.addFilter(filt)


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record comes (pytest and tools swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler assigns it; the property always follows sys.stderr
        pass


class NotFrom(logging.Filter):
    """Drop records of logger ``name`` and its children (for a handler that another handler already covers)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.prefix = name

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == self.prefix or record.name.startswith(self.prefix + "."))


_NOT_DISTILL = NotFrom(log.name)


def _console_handler(logger: logging.Logger, fmt: str) -> None:
    """A stderr handler with ``fmt`` on ``logger``. Records still propagate (Hydra's ``train.log``, pytest's
    caplog), but the root's console handlers (Hydra's, on stdout) skip them so no line is printed twice."""
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for handler in logging.getLogger().handlers:
        if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                and handler.stream in consoles):
            _add_filter(handler, _NOT_DISTILL)


def _quiet_bars() -> None:
    """No tqdm bars from Hugging Face libraries: on a non-terminal each redraw is a line of ``\\r`` garbage."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers and the hub at import
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def setup_console() -> None:
    """Configure what a run prints (see the module docstring); safe to call again, e.g. once Hydra set up logging.

    Call it before importing transformers where possible: torchao's import-time messages are filtered from then.
    """
    _console_handler(log, LINE_FORMAT)
    for name in RANK_ZERO_LOGGERS:
        _add_filter(logging.getLogger(name), BANNER)
    _add_filter(logging.getLogger(SEED_LOGGER), SEED_MESSAGES)
    for name, filt in _DROPPED.items():
        _add_filter(logging.getLogger(name), filt)
    for category, message, module in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if not sys.stderr.isatty():
        _quiet_bars()


def seed_everything(seed: int, workers: bool = True) -> int:
    """``lightning.seed_everything(seed, workers=workers)``; says "Seed set to N" only on the first call in the
    process. Returns the seed, as Lightning does."""
    global _first_seed
    verbose, _first_seed = _first_seed, False
    return L.seed_everything(seed, workers=workers, verbose=verbose)


# ---- transformers' load report -----------------------------------------------------------------
NEW_HEAD_PARTS = ("classifier", "pre_classifier", "score", "pooler")  # initialised afresh for a task
DROPPED_HEAD_PARTS = ("cls", "lm_head", "vocab_transform", "vocab_projector", "vocab_layer_norm", "pooler")
LOAD_LOGGERS = ("transformers.modeling_utils",)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExpectedHeadReport(logging.Filter):
    """Drop transformers' ``LOAD REPORT`` when every row is an expected head change: MISSING or MISMATCH keys
    of a new task head (``new_head``), UNEXPECTED keys of a dropped pretraining head (``dropped_head``).
    A report naming any other key (e.g. a missing encoder layer) passes; ``hidden`` counts dropped reports."""

    def __init__(self, new_head: tuple[str, ...] = NEW_HEAD_PARTS,
                 dropped_head: tuple[str, ...] = DROPPED_HEAD_PARTS) -> None:
        super().__init__()
        self.allowed = {"MISSING": set(new_head), "MISMATCH": set(new_head), "UNEXPECTED": set(dropped_head)}
        self.hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        if "LOAD REPORT" not in message:
            return True
        rows = [[c.strip() for c in line.split("|")] for line in message.splitlines()[1:] if "|" in line]
        rows = rows[1:]  # the header row; the -+- separator has no "|"
        if not rows or not all(self._expected(row) for row in rows):
            return True
        self.hidden += 1
        return False

    def _expected(self, row: list[str]) -> bool:
        if len(row) < 2 or row[1] not in self.allowed:
            return False
        return bool(set(row[0].split(".")) & self.allowed[row[1]])


@contextlib.contextmanager
def quiet_load(new_head: tuple[str, ...] = NEW_HEAD_PARTS,
               dropped_head: tuple[str, ...] = DROPPED_HEAD_PARTS) -> Iterator[ExpectedHeadReport]:
    """Within the block, transformers' weight-load report is hidden when it only lists the expected head
    (see :class:`ExpectedHeadReport`), and the "Loading weights" bar is off. Yields the filter."""
    from transformers.utils import logging as hf_logging

    filt = ExpectedHeadReport(new_head, dropped_head)
    loggers = [logging.getLogger(name) for name in LOAD_LOGGERS]
    bars = hf_logging.is_progress_bar_enabled()
    for logger in loggers:
        logger.addFilter(filt)
    hf_logging.disable_progress_bar()
    try:
        yield filt
    finally:
        for logger in loggers:
            logger.removeFilter(filt)
        if bars:
            hf_logging.enable_progress_bar()


# ---- progress ----------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """``42s``, ``2m10s``, ``1h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _batch_size(batch: Any) -> int:
    from distill.loggers import _batch_counts

    return _batch_counts(batch)[0]


class LineProgress(ProgressBar):
    """Training progress as plain lines, for a stdout that is not a terminal.

    A line every ``every_n_steps`` batches and/or every ``every_s`` seconds (either may be None), and one at
    the end of each training epoch with the epoch's validation metrics::

        epoch 1/3  step 120/375  loss 0.4123  312.4 ex/s  ETA 2m10s

    ``step`` counts the epoch's batches; ex/s is training examples per second since the previous line
    (validation time excluded); ETA is the fit's remaining optimizer steps at its average pace so far.
    """

    def __init__(self, every_n_steps: int | None = None, every_s: float | None = 30.0,
                 stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1 (or null)")
        self.every_n_steps = every_n_steps
        self.every_s = every_s
        self.stream = stream
        self.lines: list[str] = []  # everything printed, for tests and callers
        self._enabled = True
        self._fit_t0 = self._last_t = time.perf_counter()
        self._fit_step0 = 0
        self._examples = 0
        self._paused = 0.0
        self._val_t0: float | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            print(*args, file=self.stream or sys.stdout, flush=True, **kwargs)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_t0 = time.perf_counter()
        self._fit_step0 = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_t0 is not None:
            self._paused += time.perf_counter() - self._val_t0
            self._val_t0 = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._examples += _batch_size(batch)
        done, total = batch_idx + 1, self.total_train_batches
        if done >= total:
            return  # the epoch line follows
        by_steps = self.every_n_steps is not None and done % self.every_n_steps == 0
        by_time = self.every_s is not None and time.perf_counter() - self._last_t >= self.every_s
        if by_steps or by_time:
            self._emit(trainer, pl_module, done)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = self.total_train_batches
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready if math.isinf(total) else int(total)
        self._emit(trainer, pl_module, done, epoch_end=True)

    def _mark(self) -> None:
        self._last_t = time.perf_counter()
        self._examples = 0
        self._paused = 0.0

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule, done: int, epoch_end: bool = False) -> None:
        now = time.perf_counter()
        metrics = self.get_metrics(trainer, pl_module)
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        total = self.total_train_batches
        parts = [f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else ""),
                 f"step {done}" + ("" if math.isinf(total) else f"/{int(total)}")]
        loss = next((metrics[k] for k in ("train/loss", "loss", "train_loss") if k in metrics), None)
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        elapsed = max(now - self._last_t - self._paused, 1e-9)
        parts.append(f"{self._examples / elapsed:.1f} ex/s")
        eta = self._eta(trainer, now)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        if epoch_end:
            parts += [f"{k} {float(v):.4f}" for k, v in metrics.items()
                      if k.startswith("val") and isinstance(v, (int, float))]
        self._write("  ".join(parts))
        self._mark()

    def _eta(self, trainer: L.Trainer, now: float) -> float | None:
        total = trainer.estimated_stepping_batches
        steps = trainer.global_step - self._fit_step0
        if steps <= 0 or math.isinf(total):
            return None
        return (total - trainer.global_step) * (now - self._fit_t0) / steps

    def _write(self, line: str) -> None:
        if not self._enabled:
            return
        self.lines.append(line)
        print(line, file=self.stream or sys.stdout, flush=True)


def progress_bar(every_n_steps: int | None = None, every_s: float | None = 30.0,
                 stream: TextIO | None = None) -> ProgressBar:
    """RichProgressBar when ``stream`` (default stdout) is a terminal, else :class:`LineProgress`."""
    target = stream or sys.stdout
    if target.isatty():
        return RichProgressBar()
    return LineProgress(every_n_steps=every_n_steps, every_s=every_s, stream=stream)
