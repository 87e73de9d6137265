"""distill.quant.variants (and the quant presets' ``variants``): producers of the report's int8 rows."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_bert

pytest.importorskip("torchao")

from hydra.utils import instantiate  # noqa: E402

from distill.errors import ConfigError  # noqa: E402
from distill.quant import int8_modules, load_int8, prepare_qat  # noqa: E402
from distill.quant.variants import PTQInt8, QATInt8  # noqa: E402
from distill.report import ModelEntry, VariantContext  # noqa: E402


@pytest.fixture
def ctx(tmp_path):
    student, tokenizer = make_tiny_bert(tmp_path / "student", layers=2, hidden=32)
    return VariantContext(trained=student, student=student.eval(), student_dir=tmp_path / "student",
                          tokenizer=tokenizer, out_dir=tmp_path / "compression")


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 40, (4, 10), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("embeddings", [False, True])
def test_ptq_entry_is_a_saved_int8_student(ctx, embeddings):
    entry = PTQInt8(embeddings=embeddings, layers=["Linear"])(ctx)
    assert isinstance(entry, ModelEntry)
    assert (entry.name, entry.format, entry.precision, entry.runtime) == ("student_int8_ptq", "torchao", "int8", "torch")
    assert entry.path == ctx.out_dir / "student-int8-ptq" and (entry.path / "tokenizer_config.json").is_file()
    kinds = set(int8_modules(entry.model).values())
    assert kinds == ({"dynamic", "embedding"} if embeddings else {"dynamic"})
    assert not int8_modules(ctx.student)  # the fp32 student is left as it was
    with torch.inference_mode():
        assert torch.equal(load_int8(entry.path)(**_batch()).logits, entry.model(**_batch()).logits)


def test_qat_entry_needs_a_fake_quantized_student(ctx):
    with pytest.raises(ConfigError, match="fake quantization"):
        QATInt8()(ctx)
    ctx.trained = prepare_qat(ctx.student)
    entry = QATInt8()(ctx)
    assert entry.name == "student_int8_qat" and entry.notes == {"source": "qat"}
    assert (ctx.out_dir / "student-int8-qat" / "model_int8.pt").is_file() and int8_modules(entry.model)


@pytest.mark.parametrize("preset, rows", [
    ("none", []),
    ("ptq_int8", ["student_int8_ptq", "student_onnx_int8"]),
    ("qat_int8", ["student_int8_qat", "student_int8_ptq", "student_onnx_int8"]),
])
def test_presets_name_each_row_as_its_producer_does(make_cfg, preset, rows):
    cfg = make_cfg(f"quant={preset}")
    assert "mode" not in cfg.quant
    assert list(cfg.quant.variants) == rows
    for name, node in cfg.quant.variants.items():
        producer = instantiate(node)
        assert callable(producer) and producer.name == name
        if hasattr(producer, "embeddings"):
            assert producer.embeddings == cfg.quant.embeddings
