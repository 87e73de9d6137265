"""What keeps one export command short without dropping a check: each model runs over the dev set once
(the student's reference logits shared, an artifact's own logits handed to the report), ExecuTorch runs each
example at its own length, Core ML converts once for both precisions, and every step's time is recorded."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import make_tiny_bert

from distill.export.edge import unpadded_length, weights_key
from distill.export.onnx import logits_of, synthetic_batches
from distill.export.replay import Remembered, reference_logits
from distill.export.steps import recording, step, summary
from distill.report.entry import VariantContext

NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    model, _ = make_tiny_bert(tmp_path_factory.mktemp("reuse") / "student")
    return model.eval()


@pytest.mark.parametrize(
    ("mask", "minimum", "length"),
    [
        ([1, 1, 1, 0, 0], 1, 3),  # right padding: the real tokens
        ([1, 1, 1, 1, 1], 1, 5),  # no padding
        ([1, 0, 0, 0, 0], 2, 2),  # shorter than the program's shortest sequence: padded up to it (masked)
        ([0, 0, 1, 1, 1], 1, 5),  # left padding: kept whole
        ([1, 0, 1, 0, 0], 1, 5),  # a gap: kept whole
    ],
)
def test_unpadded_length(mask, minimum, length):
    assert unpadded_length(torch.tensor(mask), minimum) == length


class Counting:
    """A runtime stand-in: logits = the row sums of input_ids, counting the examples it runs."""

    threads = 3

    def __init__(self) -> None:
        self.examples = 0

    def __call__(self, **inputs):
        self.examples += len(inputs["input_ids"])
        return inputs["input_ids"].float().sum(1, keepdim=True).repeat(1, 2)


def test_remembered_answers_only_the_batches_it_ran():
    batches = synthetic_batches(50, 2, 3, 8)
    runtime = Counting()
    logits = [runtime(**b) for b in batches]
    wrapped = Remembered(runtime, batches, logits)
    assert wrapped.threads == 3  # the runtime's attributes (the report reads threads)
    for b, expected in zip(batches, logits):
        assert wrapped(**b) is expected
    assert runtime.examples == 6  # nothing ran again
    copy = {k: v.clone() for k, v in batches[0].items()}  # equal values, another tensor: runs
    assert torch.equal(wrapped(**copy), logits[0]) and runtime.examples == 9
    batches[1]["input_ids"][0, 0] += 1  # the remembered tensor written in place: runs again, new answer
    assert wrapped(**batches[1])[0, 0] == logits[1][0, 0] + 1 and runtime.examples == 12


def test_reference_logits_once_per_student_and_batches(student, tmp_path):
    batches = synthetic_batches(student.config.vocab_size, 2, 3, 9)
    ctx = VariantContext(student, student, tmp_path, None, tmp_path, calibration=batches)
    calls = []
    hook = student.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = reference_logits(ctx)
        assert reference_logits(ctx) is first and len(calls) == 2  # 2 batches, once
        hook.remove()
        for got, b in zip(first, batches):
            assert torch.allclose(got, logits_of(student, b))
        hook = student.register_forward_hook(lambda *_: calls.append(1))
        key = weights_key(student)
        with torch.no_grad():
            student.classifier.bias.add_(1.0)  # weights written in place: computed again, new values
        assert weights_key(student) != key
        again = reference_logits(ctx)
        assert len(calls) == 4 and torch.allclose(again[0], first[0] + 1.0, atol=1e-5)
        other = VariantContext(student, student, tmp_path, None, tmp_path, calibration=batches[:1])
        assert len(reference_logits(other)) == 1 and len(calls) == 5  # other batches: computed
    finally:
        hook.remove()
        with torch.no_grad():
            student.classifier.bias.sub_(1.0)


def test_steps_record_wall_and_cpu():
    with recording() as steps:
        with step("outer"):
            with step("busy"):
                end = time.process_time() + 0.05
                while time.process_time() < end:
                    pass
            with step("sleep"):
                time.sleep(0.05)
    with step("not recorded"):
        pass
    names = [s["step"] for s in steps]
    assert names == ["busy", "sleep", "outer"]  # inner steps end first; the outer one includes them
    busy, sleep, outer = steps
    assert busy["cpu_s"] >= 0.04 and sleep["cpu_s"] < 0.04 and sleep["wall_s"] >= 0.05
    assert outer["wall_s"] >= busy["wall_s"] + sleep["wall_s"]
    assert summary(steps).splitlines()[1].endswith("  busy")


@pytest.mark.slow
def test_executorch_runs_each_example_at_its_own_length(student, tmp_path):
    pytest.importorskip("executorch")
    from distill.export.executorch import ExecuTorchClassifier, export_executorch

    path = export_executorch(student, tmp_path / "model-fp32.pte", "fp32", seq_len=32)
    clf = ExecuTorchClassifier(path, NAMES, threads=1)
    shapes = []
    execute = clf.method.execute
    clf.method = type("Spy", (), {"execute": lambda self, t: shapes.append(tuple(t[0].shape)) or execute(t)})()
    batch = synthetic_batches(student.config.vocab_size, 1, 5, 20, seed=4)[0]
    lengths = batch["attention_mask"].sum(1).clamp(min=2).tolist()
    got = clf(**batch)
    assert shapes == [(1, n) for n in lengths]  # no padding reaches the program
    assert torch.allclose(got, logits_of(student, batch), atol=1e-4)  # and the logits are the padded batch's


@pytest.mark.slow
def test_coreml_converts_once_for_both_precisions(student, tmp_path, monkeypatch):
    pytest.importorskip("coremltools")
    from distill.export import coreml

    calls = []
    convert = coreml._convert
    monkeypatch.setattr(coreml, "_convert", lambda *a: calls.append(a[1:]) or convert(*a))
    fp16 = coreml.export_coreml(student, tmp_path / "model-fp16.mlpackage", "fp16", seq_len=16, max_batch=4)
    int8 = coreml.export_coreml(student, tmp_path / "model-int8.mlpackage", "int8", seq_len=16, max_batch=4)
    assert calls == [(16, 4)]
    sizes = [coreml.inspect_coreml(p)["weights_mb"] for p in (fp16, int8)]
    assert sizes[1] < 0.75 * sizes[0]  # the int8 package was quantized from the shared fp16 program
    coreml.export_coreml(student, tmp_path / "other.mlpackage", "fp16", seq_len=8, max_batch=4)
    assert calls == [(16, 4), (8, 4)]  # other shapes: converted again
