"""The compressed export of a sparse student: bit-exact round trip, smaller than dense at 50% / 90% sparsity,
the sparsity measure on hand-made weights, and the report row it becomes."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from distill.prune.sparse_export import (
    WEIGHTS,
    load_sparse,
    load_sparse_state_dict,
    pack_state_dict,
    save_sparse,
    unpack_state_dict,
)
from distill.prune.sparsity import model_sparsity, prunable_linears, sparsity, stored_weight


def small_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config).eval()


def zero_smallest(model: nn.Module, share: float) -> None:
    """Zero the ``share`` smallest-magnitude weights of each pruned layer (a plain reference, no prune API)."""
    with torch.no_grad():
        for layer in prunable_linears(model):
            w = layer.weight.view(-1)
            w[w.abs().argsort()[: round(share * w.numel())]] = 0.0


def test_sparsity_counts_exact_zeros_of_the_pruned_layers_only():
    model = small_bert()
    layers = prunable_linears(model)
    names = {n for n, m in model.named_modules() if any(m is layer for layer in layers)}
    assert all("classifier" not in n and "pooler" not in n for n in names) and len(layers) == 2 * 6
    with torch.no_grad():  # hand-made zeros: 3 whole rows of the first query layer, 100 weights of one FFN
        layers[0].weight[:3] = 0.0
        layers[4].weight.view(-1)[:100] = 0.0
        model.classifier.weight.zero_()  # not counted
        model.bert.pooler.dense.weight.zero_()  # not counted
    total = sum(layer.weight.numel() for layer in layers)  # 2 x (4 x 32 x 32 + 2 x 32 x 64) = 16,384
    assert total == 16384
    assert model_sparsity(model) == pytest.approx((3 * 32 + 100) / 16384, abs=0) == sparsity(layers)
    assert model_sparsity(nn.Sequential(nn.ReLU())) is None and model_sparsity(None) is None


def test_int8_weights_count_as_stored():
    from distill.quant import ptq_dynamic_int8

    model = small_bert()
    zero_smallest(model, 0.5)
    int8 = ptq_dynamic_int8(model, layers=("Linear",), embeddings=False)
    assert stored_weight(prunable_linears(int8)[0]).dtype == torch.int8
    # symmetric per-row int8 keeps every zero a zero (and may round a few tiny weights to zero too)
    assert 0.5 <= model_sparsity(int8) <= 0.5 + 0.02


@pytest.mark.parametrize("share", [0.5, 0.9])
def test_export_loads_back_identical_and_is_smaller_than_dense(tmp_path, share):
    model = small_bert()
    zero_smallest(model, share)
    assert model_sparsity(model) == pytest.approx(share, abs=1e-3)
    saved = save_sparse(model, tmp_path / "sparse")
    model.save_pretrained(tmp_path / "dense")
    back = load_sparse(tmp_path / "sparse")
    assert isinstance(back, BertForSequenceClassification)
    ref = model.state_dict()
    got = back.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    ids = torch.randint(5, 120, (3, 10))
    assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)
    sparse_bytes = saved["path"].stat().st_size
    dense_bytes = (tmp_path / "dense" / "model.safetensors").stat().st_size
    # payload (after the 8-byte length and the JSON header) is exactly the dense bytes minus, for every masked
    # tensor, its zeros' bytes plus one bit per weight
    payload = sparse_bytes - 8 - int.from_bytes(saved["path"].read_bytes()[:8], "little")
    masked = [t for t in ref.values() if t.is_floating_point() and t.numel() >= 64
              and 4 * t.count_nonzero() + (t.numel() + 7) // 8 < 4 * t.numel()]
    dense_payload = sum(4 * t.numel() for t in ref.values() if t.is_floating_point()) + sum(
        8 * t.numel() for t in ref.values() if not t.is_floating_point())
    assert payload == dense_payload - sum(4 * (t.numel() - t.count_nonzero()) - (t.numel() + 7) // 8 for t in masked)
    # the pruned layers hold 16,384 of the model's 23,202 parameters (embeddings stay dense): the file is 0.71 of
    # the dense file at 50%, 0.44 at 90% (JSON headers included)
    assert sparse_bytes / dense_bytes < {0.5: 0.75, 0.9: 0.5}[share]
    assert saved["path"].name == WEIGHTS and (tmp_path / "sparse" / "config.json").is_file()


def test_packed_layout_is_a_plain_bitmask_and_values():
    """The layout a user can read without distill: little-endian bits, values in row-major order."""
    w = torch.zeros(8, 16)
    w[0, 1], w[3, 15], w[7, 0] = 1.5, -2.0, 3.25
    tensors, meta = pack_state_dict({"w": w, "dense": torch.arange(4.0)})
    assert torch.equal(tensors["w::values"], torch.tensor([1.5, -2.0, 3.25]))
    bits = np.unpackbits(tensors["w::mask"].numpy(), bitorder="little")
    assert bits.shape == (128,) and list(np.flatnonzero(bits)) == [1, 3 * 16 + 15, 7 * 16]
    assert json.loads(meta["distill.sparse.shapes"]) == {"w": {"shape": [8, 16], "dtype": "float32"}}
    assert torch.equal(tensors["dense"], torch.arange(4.0))  # too small to be worth a mask: as is
    back = unpack_state_dict(tensors, meta)
    assert torch.equal(back["w"], w) and torch.equal(back["dense"], torch.arange(4.0))
    with pytest.raises(ValueError, match="not a distill-bitmask-v1 file"):
        unpack_state_dict(tensors, {"format": "pt"})


def test_dense_weights_stay_dense(tmp_path):
    """Only tensors with enough zeros get a mask (here the all-zero biases HF initialises); the rest are stored
    as they are, and everything loads back the same."""
    from safetensors import safe_open

    model = small_bert()
    saved = save_sparse(model, tmp_path)
    with safe_open(str(saved["path"]), "pt") as f:
        masked = set(json.loads(f.metadata()["distill.sparse.shapes"]))
    assert masked and masked == {n for n, t in model.state_dict().items() if t.is_floating_point() and
                                 t.numel() >= 64 and t.count_nonzero() < t.numel() * 31 / 32}
    state = load_sparse_state_dict(saved["path"])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
