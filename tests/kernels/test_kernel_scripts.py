"""The softmax-KL benchmark's variant names and the accuracy script (CPU: torch path + Triton interpreter)."""

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first `import triton`

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import accuracy_softmax_kl  # noqa: E402
from bench_softmax_kl import parse_variant  # noqa: E402


def test_variant_names_parse_into_launch_overrides():
    assert parse_variant("ours@2048") == {"block": 2048, "vec_stats": False}
    assert parse_variant("ours@1024w4") == {"block": 1024, "vec_stats": False, "num_warps": 4}
    assert parse_variant("ours@8192w16v") == {"block": 8192, "vec_stats": True, "num_warps": 16}


@pytest.mark.parametrize("name", ["ours@", "ours@1000", "ours@1024w3", "ours@1024x", "ours@1024vw4", "ours@w4"])
def test_bad_variant_names_are_refused(name):
    with pytest.raises(ValueError, match="bad kernel variant"):
        parse_variant(name)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter NaN lanes
def test_accuracy_script_writes_its_table_and_stays_within_the_targets(tmp_path):
    rows = accuracy_softmax_kl.main(["--out-dir", str(tmp_path), "--temperatures", "1", "100"])
    if not torch.cuda.is_available():
        md = (tmp_path / "softmax_kl_cpu_accuracy.md").read_text()
        assert md.count("\n| fp32 | 100 | close | triton |") == 1
    variants = {r["variant"] for r in rows}
    assert {"torch", "triton", "triton-vec"} <= variants
    assert len(rows) == 2 * 2 * 2 * len(variants)  # dtypes x temperatures x input families x variants
    for r in rows:  # the targets: fp32 1e-5 (T <= 20) / 1e-3 (T = 100), bf16 1e-2
        bound = (1e-5 if r["T"] <= 20 else 1e-3) if r["dtype"] == "fp32" else 1e-2
        assert r["loss_rel_err"] <= bound and r["grad_rel_err"] <= bound, r
