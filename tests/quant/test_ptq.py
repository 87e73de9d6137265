"""PTQ dynamic int8, int8 save/load round trip and int8 storage size."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("torchao")

from distill.errors import DataError  # noqa: E402
from distill.quant import int8_modules, load_int8, prepare_qat, ptq_dynamic_int8, save_int8  # noqa: E402
from distill.quant.size import int8_size_estimate  # noqa: E402
from distill.report.timing import size_on_disk_mb  # noqa: E402


def tiny_bert(seed: int = 0, hidden: int = 32, vocab: int = 120):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, num_labels=2)
    return BertForSequenceClassification(config).eval()


def batch(n: int = 8, seq: int = 16, vocab: int = 120) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, vocab, (n, seq), generator=g), "attention_mask": torch.ones(n, seq, dtype=torch.long)}


@pytest.mark.parametrize("embeddings", [False, True])
def test_ptq_runs_close_to_fp32_and_leaves_fp32_untouched(embeddings):
    fp32 = tiny_bert()
    before = copy.deepcopy(fp32.state_dict())
    int8 = ptq_dynamic_int8(fp32, embeddings=embeddings)
    x = batch()
    with torch.inference_mode():
        ref, got = fp32(**x).logits, int8(**x).logits
    assert all(torch.equal(v, fp32.state_dict()[k]) for k, v in before.items())
    assert len(int8_modules(int8)) == 2 * 6 + 2 + (3 if embeddings else 0)  # 6 Linear per layer, pooler, classifier
    # int8 rounding of weights and activations: error ~1% of the logit range on a random model
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max()
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def test_ptq_of_qat_prepared_model_strips_fake_quant():
    model = prepare_qat(tiny_bert())
    int8 = ptq_dynamic_int8(model)
    assert set(int8_modules(int8).values()) == {"dynamic"}


@pytest.mark.parametrize("embeddings", [False, True])
def test_int8_save_load_round_trip_is_exact(tmp_path, embeddings):
    int8 = ptq_dynamic_int8(tiny_bert(), embeddings=embeddings)
    out = save_int8(int8, tmp_path / "int8", extra={"source": "ptq"})
    assert {p.name for p in out.iterdir()} >= {"config.json", "model_int8.pt", "quantization.json"}
    assert json.loads((out / "quantization.json").read_text())["source"] == "ptq"
    loaded = load_int8(out)
    x = batch()
    with torch.inference_mode():
        assert torch.equal(loaded(**x).logits, int8(**x).logits)
    assert int8_modules(loaded) == int8_modules(int8)


def test_save_int8_and_load_int8_errors(tmp_path):
    with pytest.raises(DataError, match="no int8 layer"):
        save_int8(tiny_bert(), tmp_path / "x")
    with pytest.raises(DataError, match="not an int8 model folder"):
        load_int8(tmp_path)


def test_int8_linear_weights_are_about_4x_smaller_and_estimate_matches_disk(tmp_path):
    hidden = 128
    fp32 = tiny_bert(hidden=hidden, vocab=1000)
    int8 = ptq_dynamic_int8(fp32)
    fp32_bytes = int8_bytes = 0
    for name in int8_modules(int8):
        w_fp32 = fp32.get_submodule(name).weight
        w_int8 = int8.get_submodule(name).weight
        fp32_bytes += w_fp32.numel() * 4
        int8_bytes += w_int8.qdata.numel() + w_int8.scale.numel() * w_int8.scale.element_size()
    ratio = fp32_bytes / int8_bytes
    assert 3.8 < ratio <= 4.0  # 1 byte per weight + one fp32 scale per output row
    fp32.save_pretrained(tmp_path / "fp32")
    for embeddings in (False, True):
        save_int8(ptq_dynamic_int8(fp32, embeddings=embeddings), tmp_path / f"int8-{embeddings}")
        est = int8_size_estimate(fp32.config, embeddings)
        assert size_on_disk_mb(tmp_path / "fp32") == pytest.approx(est["fp32_mb"], rel=0.01)
        # torch.save adds ~2 KB per int8 tensor (pickled subclass metadata): 0.4% for student=tiny, more here
        assert size_on_disk_mb(tmp_path / f"int8-{embeddings}") == pytest.approx(est["int8_mb"], abs=0.05)


def test_tiny_student_needs_int8_embeddings_for_3_5x():
    from transformers import BertConfig

    tiny = BertConfig(vocab_size=30522, hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                      intermediate_size=1200, num_labels=2)
    assert int8_size_estimate(tiny, embeddings=False)["ratio"] < 1.4
    assert int8_size_estimate(tiny, embeddings=True)["ratio"] > 3.5
