"""What a run prints: one device banner, no advertisement, one "Seed set", no load table for an expected new
head, no named library deprecation noise, and plain progress lines when stdout is not a terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning_utilities.core import rank_zero

from distill import console
from distill.console import (
    ExpectedHeadReport,
    LineProgress,
    format_duration,
    progress_bar,
    quiet_load,
    seed_everything,
    setup_console,
)


class Records(logging.Handler):
    """Collects the messages that reach a logger's handlers (i.e. that its filters let through)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger, self.messages = logger, []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> Records:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_model_summary=False, **kwargs)


def test_device_banner_passes_once_and_the_advert_never(monkeypatch):
    setup_console()
    monkeypatch.setattr(console.BANNER, "seen", set())  # as if no Trainer had been built in this process
    with Records(rank_zero.log) as got:  # the logger Lightning's rank_zero_info writes to
        _trainer(enable_progress_bar=False)
        first = list(got.messages)
        _trainer(enable_progress_bar=False)
    assert [m for m in first if m.startswith("GPU available")] and [m for m in first if m.startswith("TPU")]
    assert got.messages == first  # the second Trainer printed nothing
    assert not [m for m in got.messages if "litlogger" in m or "Tip" in m]


def test_setup_console_is_idempotent_and_prints_short_lines(capsys, caplog, monkeypatch):
    hydra_console = logging.StreamHandler(sys.stdout)  # Hydra's job logging: root → stdout, long format
    # a library's root-level logging.warning() in an earlier test may have left a basicConfig handler on that
    # test's captured stderr, closed since: leave it out (pytest's own capture handlers stay)
    live = [h for h in logging.getLogger().handlers if not getattr(getattr(h, "stream", None), "closed", False)]
    monkeypatch.setattr(logging.getLogger(), "handlers", [*live, hydra_console])
    setup_console()
    setup_console()
    handlers = [h for h in console.log.handlers if isinstance(h, console.StderrHandler)]
    assert len(handlers) == 1 and hydra_console.filters == [console._NOT_DISTILL]
    with caplog.at_level("INFO", logger="distill"):
        console.log.info("Fine-tuning teacher on sst2")
        logging.getLogger("other").warning("from elsewhere")
    out = capsys.readouterr()
    assert out.err == "[distill] Fine-tuning teacher on sst2\n"
    assert out.out == "from elsewhere\n"  # the root's console prints others, not distill's lines again
    assert "Fine-tuning teacher on sst2" in caplog.text  # still propagates: train.log, caplog


def test_named_library_noise_is_dropped_and_other_warnings_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_console()
        for message in ("`isinstance(treespec, LeafSpec)` is deprecated, use ... instead.", "something else"):
            warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21,
                                   module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, "mine.py", 1,
                               module="mycode")
    assert [str(w.message) for w in caught] == ["something else", "`isinstance(treespec, LeafSpec)` is deprecated"]
    pytree = logging.getLogger("torch.utils._pytree")
    with Records(pytree) as got:
        pytree.warning("%s is an Enum subclass and is now natively supported by torch.compile", "<enum 'K'>")
        pytree.warning("a real pytree problem")
    assert got.messages == ["a real pytree problem"]
    found, level = logging.getLogger("datasets"), logging.getLogger("datasets").level
    found.setLevel(logging.INFO)  # as at datasets' import, before its own default (WARNING) is set
    with Records(found) as got:
        found.info("JAX version 0.10.2 available.")
        found.info("PyTorch version 2.13.0 available.")
        found.info("a real datasets message")
    found.setLevel(level)
    assert got.messages == ["a real datasets message"]


def test_seed_everything_says_it_once_and_still_seeds(monkeypatch):
    setup_console()
    monkeypatch.setattr(console, "_first_seed", True)
    monkeypatch.setattr(console.SEED_MESSAGES, "seen", set())
    with Records(logging.getLogger(console.SEED_LOGGER)) as got:
        assert seed_everything(7) == 7
        a = torch.rand(3)
        assert seed_everything(7) == 7
        b = torch.rand(3)
        L.seed_everything(7)  # Lightning's own verbose call: the same message again is dropped too
    assert got.messages == ["Seed set to 7"]
    assert torch.equal(a, b)


# ---- transformers' load report -----------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny pretrained BERT encoder without a classification head (like the MiniLM teacher's checkpoint)."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(path)
    return path


def _load(path, **kwargs):
    from transformers import AutoModelForSequenceClassification

    with Records(logging.getLogger("transformers.modeling_utils")) as got:
        AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, **kwargs)
    return [m for m in got.messages if "LOAD REPORT" in m]


def test_quiet_load_hides_the_report_of_an_expected_new_head(encoder_dir):
    reports = _load(encoder_dir)
    assert len(reports) == 1 and "classifier.weight" in reports[0]  # without it, the table is printed
    with quiet_load() as filt:
        assert _load(encoder_dir) == []
    assert filt.hidden == 1
    assert len(_load(encoder_dir)) == 1  # the filter is gone after the block


def test_quiet_load_still_reports_other_missing_weights(encoder_dir):
    with quiet_load() as filt:
        (report,) = _load(encoder_dir, num_hidden_layers=2)  # layer 1 isn't in the checkpoint
    assert "layer.1" in report and filt.hidden == 0


def test_expected_head_report_reads_the_table():
    def record(table: str) -> logging.LogRecord:
        return logging.LogRecord("t", logging.WARNING, "f", 1, "\x1b[1mX LOAD REPORT\x1b[0m from: p\n" + table,
                                 None, None)

    filt = ExpectedHeadReport()
    head = "Key | Status\n----+-------\nclassifier.bias | MISSING\ncls.predictions.bias | UNEXPECTED\n"
    assert not filt.filter(record(head + "\nNotes:\n- MISSING:\tnewly initialized"))
    assert filt.filter(record(head + "bert.encoder.layer.0.output.dense.weight | MISSING\n"))
    assert filt.filter(record("Key | Status\n----+-------\nclassifier.weight | CONVERSION\n"))
    assert filt.filter(logging.LogRecord("t", logging.WARNING, "f", 1, "unrelated", None, None))


# ---- progress ----------------------------------------------------------------------------------
class _Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Embedding(10, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch["input_ids"]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.layer(batch["input_ids"]).mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int = 24, batch_size: int = 4):
    data = [{"input_ids": i} for i in torch.randint(0, 10, (n, 6))]
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


LINE = re.compile(r"^epoch (\d)/2  step (\d)/6  loss \d+\.\d{4}  \d+\.\d ex/s  ETA \d+s")


def test_line_progress_prints_step_loss_speed_and_eta_lines(tmp_path):
    stream = io.StringIO()
    bar = LineProgress(every_n_steps=2, every_s=None, stream=stream)
    trainer = _trainer(max_epochs=2, callbacks=[bar], default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(_Toy(), _loader(), _loader(8))
    assert sum(isinstance(c, ProgressBar) for c in trainer.callbacks) == 1  # Lightning added no bar of its own
    lines = stream.getvalue().splitlines()
    assert lines == bar.lines and len(lines) == 6  # steps 2, 4 and the epoch's end, twice
    steps = [tuple(map(int, LINE.match(line).groups())) for line in lines]
    assert steps == [(1, 2), (1, 4), (1, 6), (2, 2), (2, 4), (2, 6)]
    assert all(" val/score " in line for line in (lines[2], lines[5]))  # epoch lines carry validation metrics
    assert lines[-1].split("ETA ")[1].startswith("0s")


def test_line_progress_by_epoch_only_and_silent_when_disabled(tmp_path):
    stream = io.StringIO()
    trainer = _trainer(max_epochs=2, callbacks=[LineProgress(every_n_steps=None, every_s=None, stream=stream)],
                       default_root_dir=tmp_path)
    trainer.fit(_Toy(), _loader())
    assert [line.split("  ")[:2] for line in stream.getvalue().splitlines()] == [["epoch 1/2", "step 6/6"],
                                                                                  ["epoch 2/2", "step 6/6"]]
    quiet = LineProgress(every_n_steps=1, stream=(stream := io.StringIO()))
    quiet.disable()  # what Lightning does on ranks other than 0
    _trainer(max_epochs=1, callbacks=[quiet], default_root_dir=tmp_path).fit(_Toy(), _loader())
    assert stream.getvalue() == ""
    with pytest.raises(ValueError):
        LineProgress(every_n_steps=0)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_rich_on_a_terminal_and_lines_elsewhere(make_cfg):
    assert isinstance(progress_bar(stream=_Terminal()), RichProgressBar)
    bar = progress_bar(every_n_steps=5, stream=io.StringIO())
    assert isinstance(bar, LineProgress) and bar.every_n_steps == 5 and bar.every_s == 30
    from distill.config import build

    built = build(make_cfg().callbacks.progress_bar, "callbacks.progress_bar")
    assert isinstance(built, LineProgress)  # pytest captures stdout: not a terminal


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 130, 3 * 3600 + 5 * 60)] == ["0s", "42s", "2m10s", "3h05m"]
