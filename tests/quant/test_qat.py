"""QAT with torchao: prepare → train a few steps → convert to real int8; the Lightning callback; errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("torchao")

from distill.errors import ConfigError  # noqa: E402
from distill.quant import (  # noqa: E402
    QATCallback,
    check_quantizable,
    convert_qat,
    fake_quant_enabled,
    int8_modules,
    is_qat_prepared,
    prepare_qat,
    set_fake_quant_enabled,
)


def tiny_bert(seed: int = 0, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=num_labels)
    return BertForSequenceClassification(config)


def batch(n: int = 8, seq: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::2, seq // 2:] = 0  # padded rows
    return {"input_ids": torch.randint(0, 120, (n, seq), generator=g), "attention_mask": mask,
            "labels": torch.randint(0, 2, (n,), generator=g)}


def test_prepared_student_saves_as_plain_fp32_hf_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = prepare_qat(tiny_bert(), embeddings=True).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert not is_qat_prepared(loaded)
    x = batch()
    with torch.no_grad():
        set_fake_quant_enabled(model, False)
        assert torch.equal(loaded(**x).logits, model(**x).logits)


def test_prepare_keeps_parameters_and_disabled_fake_quant_equals_fp32():
    model = tiny_bert()
    fp32 = copy.deepcopy(model).eval()
    params_before = {n: p for n, p in model.named_parameters()}
    keys_before = list(model.state_dict())
    prepare_qat(model, enabled=False)
    assert is_qat_prepared(model) and not fake_quant_enabled(model)
    # torchao swaps modules but reuses the nn.Parameter objects: an optimizer built before prepare still works
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys_before
    x = batch()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, fp32(**x).logits)
        set_fake_quant_enabled(model, True)
        assert not torch.equal(model(**x).logits, fp32(**x).logits)


@pytest.mark.parametrize("embeddings", [False, True])
def test_qat_train_then_convert_matches_fake_quant(embeddings):
    model = tiny_bert()
    prepare_qat(model, {"embeddings": embeddings, "layers": ["Linear"]})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = batch()
    losses = []
    for _ in range(4):
        loss = model(**x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # gradients flow through the fake quantizers (straight-through)
    model.eval()
    with torch.no_grad():
        fake = model(**x).logits
        int8 = convert_qat(model)
        real = int8(**x).logits
    kinds = set(int8_modules(int8).values())
    assert kinds == ({"dynamic", "embedding"} if embeddings else {"dynamic"})
    assert is_qat_prepared(model) and not is_qat_prepared(int8)  # convert works on a copy by default
    # Same integer grid (int8 per-token asymmetric activations, per-channel symmetric weights) on both sides;
    # only fp32 rounding differs (int32 accumulation then scaling vs fp32 matmul of dequantized values),
    # so logits agree to ~1e-7 relative; 1e-4 of the logit range leaves a wide margin.
    torch.testing.assert_close(real, fake, atol=1e-4 * fake.abs().max().item(), rtol=0)
    assert torch.equal(real.argmax(-1), fake.argmax(-1))


def test_qat_callback_enables_fake_quant_after_start_fraction():
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.student = tiny_bert()
            self.seen = []

        def training_step(self, b, i):
            self.seen.append(fake_quant_enabled(self.student))
            return self.student(**b).loss

        def configure_optimizers(self):
            self.opt_params = [p for p in self.student.parameters()]
            return torch.optim.SGD(self.opt_params, lr=0.1)

    module = Module()
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[QATCallback(start_fraction=0.5)])
    trainer.fit(module, DataLoader([batch(4, 8, seed=i) for i in range(4)], batch_size=None))
    assert module.seen == [False, False, True, True]
    assert is_qat_prepared(module.student)
    assert {id(p) for p in module.opt_params} == {id(p) for p in module.student.parameters()}
    int8 = convert_qat(module.student)
    assert int8_modules(int8)


def test_qat_callback_rejects_bad_fraction():
    with pytest.raises(ConfigError, match="start_fraction"):
        QATCallback(start_fraction=1.5)


@pytest.mark.parametrize("layer", ["Conv1d", "MyAttention", "Conv1D"])
def test_unsupported_layer_type_is_one_sentence_config_error(layer):
    model = tiny_bert()
    with pytest.raises(ConfigError) as err:
        check_quantizable(model, ["Linear", layer])
    message = str(err.value)
    assert layer in message and "supported layer types: Linear, Embedding" in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_model_without_quantizable_layers_is_config_error():
    with pytest.raises(ConfigError, match="no Linear layer"):
        check_quantizable(nn.Sequential(nn.Conv1d(2, 2, 1)), ["Linear"])
    with pytest.raises(ConfigError, match="Conv1d"):
        prepare_qat(nn.Sequential(nn.Linear(2, 2)), layers=["Conv1d"])


def test_convert_requires_prepared_model():
    with pytest.raises(ConfigError, match="prepare_qat"):
        convert_qat(tiny_bert())


@pytest.mark.usefixtures("single_thread")
def test_multi_phase_recipe_trains_qat_in_its_last_phase_only(make_cfg, tmp_path, monkeypatch):
    """quant=qat_int8 on a two-phase recipe: no fake quant while matching attention, QAT in the prediction
    phase, and the report carries the converted int8 student."""
    import distill.phases.fit as phases_mod
    from distill.train import run

    real_build_trainer, seen = phases_mod.build_trainer, []

    def spy(cfg, output_dir, **kwargs):
        trainer = real_build_trainer(cfg, output_dir, **kwargs)
        seen.append((Path(output_dir).name, any(isinstance(c, QATCallback) for c in trainer.callbacks)))
        return trainer

    monkeypatch.setattr(phases_mod, "build_trainer", spy)
    cfg = make_cfg("experiment=minilm_sst2", "phases.attention.max_epochs=1", "phases.prediction.max_epochs=1",
                   "quant=qat_int8", "quant.start_fraction=0.0", "logger=none")
    metrics, _ = run(cfg)
    assert seen == [("1-attention", False), ("2-prediction", True)]
    assert 0.0 <= metrics["student_int8_qat_score"] <= 1.0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {"student_int8_qat", "student_int8_ptq", "student_onnx_int8"} <= {r["model"] for r in report["models"]}
