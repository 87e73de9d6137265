"""distill.report.timing and hardware: quantiles, speed keys, size on disk, the machine's description."""

from __future__ import annotations

import pytest
import torch

from distill.report.hardware import cpu_name, describe_hardware
from distill.report.timing import _quantile, measure_speed, size_on_disk_mb, synthetic_inputs


def test_quantile_interpolates():
    values = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose
    assert _quantile(values, 0.5) == 5.5 and _quantile(values, 0.9) == pytest.approx(9.1)
    assert _quantile([3.0], 0.9) == 3.0


def test_measure_speed_reports_p50_p90_throughput_and_threads():
    seen = []

    def model(**inputs):
        seen.append(tuple(inputs["input_ids"].shape))
        return torch.zeros(inputs["input_ids"].shape[0], 2)

    model.threads = 3
    speed = measure_speed(model, vocab_size=50, seq_len=7, latency_runs=4, throughput_batch=5, throughput_runs=2,
                          warmup=1)
    assert set(speed) == {"latency_ms", "latency_p90_ms", "throughput_eps", "threads"}
    assert speed["latency_p90_ms"] >= speed["latency_ms"] > 0 and speed["throughput_eps"] > 0
    assert speed["threads"] == 3
    assert seen == [(1, 7)] * 5 + [(5, 7)] * 3  # warm-up + timed runs at batch 1, then at the throughput batch


def test_synthetic_inputs_stay_in_the_vocabulary():
    ids = synthetic_inputs(vocab_size=30, batch_size=2, seq_len=9)["input_ids"]
    assert ids.shape == (2, 9) and int(ids.min()) >= 15 and int(ids.max()) < 30


def test_size_counts_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 2_000_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.onnx").write_bytes(b"x" * 500_000)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 900_000)
    assert size_on_disk_mb(tmp_path) == 2.5
    assert size_on_disk_mb(tmp_path / "tokenizer.json") == 0.9


def test_hardware_names_the_machine():
    hw = describe_hardware()
    assert hw["cpu"] == cpu_name() and hw["cpu"]
    assert hw["cores"] >= hw["usable_cores"] >= 1 and hw["torch_threads"] == torch.get_num_threads()
    assert hw["torch"] == torch.__version__ and (hw["gpu"] is None) == (not torch.cuda.is_available())
