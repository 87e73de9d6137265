"""conf/loss presets of this package compose, build with the model configs, and give a finite, trainable loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import BertConfig, BertForSequenceClassification

LOSS_DIR = Path(__file__).resolve().parents[2] / "conf" / "loss"
PRESETS = ["kd_reverse", "jsd", "kd_mse", "tinybert_intermediate", "tinybert_pred", "minilm", "distilbert"]
BATCH = {
    "input_ids": torch.tensor([[2, 11, 12, 13, 3], [2, 21, 3, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    "labels": torch.tensor([0, 1]),
}


def bert(hidden: int, layers: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=37, attn_implementation="eager")  # fmt: skip
    return BertForSequenceClassification(config)


@pytest.fixture(scope="module")
def models():
    return bert(32, 2, 0), bert(48, 4, 1).eval()


def build(name: str, student, teacher):
    with initialize_config_dir(config_dir=str(LOSS_DIR), version_base=None):
        cfg = compose(config_name=name)
    # model configs go in after instantiation: OmegaConf cannot hold a transformers config
    terms = {
        key: instantiate(node, _partial_=True)(student_config=student.config, teacher_config=teacher.config)
        for key, node in (cfg.get("terms") or {}).items()
    }
    return instantiate(cfg, terms=terms)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_and_trains(name, models):
    student, teacher = models
    objective = build(name, student, teacher)
    objective.attach(student, teacher)  # what DistillationModule does when it is built
    need = objective.requires
    flags = {"output_hidden_states": "hidden_states" in need, "output_attentions": "attentions" in need}
    inputs = {k: BATCH[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_out = teacher(**inputs, **flags)
    loss, parts = objective(student(**inputs, **flags), t_out, BATCH, 0, 10)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(p.grad is not None for p in student.parameters())
    for term in objective.terms.values():
        if hasattr(term, "detach"):
            term.detach()
    student.zero_grad()
    if name.startswith("tinybert_intermediate"):
        assert set(parts) >= {"hidden", "attention"} and "soft" not in parts
        assert objective.terms["hidden"].proj is not None  # 32 → 48 projection, trained with the student
        assert need == frozenset({"hidden_states", "qkv"})
