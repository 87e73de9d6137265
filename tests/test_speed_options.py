"""Training-speed options: torch.compile of the student, mixed precision, padding to a fixed length."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from distill.train import run


def student_weights(path):
    return load_file(path / "student" / "model.safetensors")


def test_compiled_student_trains_exactly_like_the_plain_one_and_saves_a_plain_model(make_cfg, tmp_path):
    common = ("ckpt_path=null", "loss=tinybert_intermediate", "trainer.max_epochs=1")
    run(make_cfg(*common, "compile.enabled=true", "compile.backend=eager", output="compiled"))
    run(make_cfg(*common, output="plain"))
    compiled, plain = student_weights(tmp_path / "compiled"), student_weights(tmp_path / "plain")
    assert compiled.keys() == plain.keys()  # no _orig_mod. prefixes: the saved student is the plain model
    for name, weight in plain.items():
        torch.testing.assert_close(compiled[name], weight, rtol=1e-5, atol=1e-6, msg=name)
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert not any("_compiled" in key or "_orig_mod" in key for key in ckpt["state_dict"])


def test_bf16_mixed_precision_trains_on_cpu(make_cfg, tmp_path):
    metrics, objects = run(make_cfg("ckpt_path=null", "trainer.precision=bf16-mixed", output="bf16"))
    assert 0.0 <= metrics["student_score"] <= 1.0
    weights = student_weights(tmp_path / "bf16")
    assert all(w.dtype == torch.float32 for w in weights.values())  # mixed: master weights stay float32


@pytest.mark.parametrize("padding, fixed", [("max_length", True), ("longest", False)])
def test_padding_to_max_length_gives_every_batch_one_shape(make_cfg, padding, fixed):
    from distill.blocks import build_datamodule

    cfg = make_cfg(f"data.padding={padding}", "data.max_length=24")
    dm = build_datamodule(cfg, str(cfg.teacher.name_or_path))
    dm.setup("fit")
    widths = {batch["input_ids"].shape[1] for batch in dm.train_dataloader()}
    assert (widths == {24}) if fixed else (max(widths) < 24)
