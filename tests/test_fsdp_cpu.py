"""FSDP on CPU: ``trainer=fsdp_cpu`` (distill.distributed.FSDPStrategy, 2 processes over gloo) fits the student
sharded, and what the run saves is a plain Hugging Face student with the trained weights.

The trained model's logits are taken inside the job at the end of training, through the sharded root unit
(``tests/fsdp_probe.py``); the saved student, loaded with nothing but transformers, must give the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import fast_overrides, run_cli
from fsdp_probe import probe_batch

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_fsdp_cpu_fit_saves_a_plain_student_with_the_trained_logits(glue_dir, tiny_teacher, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    proc = run_cli([*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), "trainer=fsdp_cpu", "data.batch_size=4",
                    "logger=none", f"hydra.run.dir={run}", "+callbacks.probe._target_=fsdp_probe.ShardedLogits",
                    f"+callbacks.probe.path={tmp_path / 'logits.pt'}"],
                   env_extra={"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout and (run / "train_ddp_process_1.log").is_file()
    trained = torch.load(tmp_path / "logits.pt", weights_only=True)

    student = AutoModelForSequenceClassification.from_pretrained(run / "student").eval()
    assert type(student).__name__ == "BertForSequenceClassification" and student.config.hidden_size == 128
    with torch.no_grad():
        saved = student(**probe_batch()).logits
    assert trained.shape == saved.shape == (2, 2)
    torch.testing.assert_close(saved, trained, rtol=0, atol=1e-6)
    # the checkpoint FSDP wrote (gathered to rank 0, no offload on CPU) holds the same student, never the teacher
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    weights = {k.removeprefix("student."): v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"]) and ckpt["global_step"] == 4
    mine = student.state_dict()
    assert weights.keys() <= mine.keys() and all(torch.equal(weights[k], mine[k]) for k in weights)
    assert ckpt["optimizer_states"][0]["state"]  # AdamW's full state, keyed by parameter id
