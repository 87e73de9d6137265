"""student=mobilebert_tiny and experiment=mobilebert_sst2: geometry, teacher init, losses, progressive freezing."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)

from distill.config import build
from distill.data.tasks import get_task
from distill.errors import ConfigError
from distill.freeze import FreezeBelow, freeze_below
from distill.losses.capture import self_attention_modules
from distill.models.mobilebert import mobilebert_student
from distill.models.student import count_parameters
from distill.models.teacher import default_teacher_path
from distill.module import DistillationModule
from distill.phases import plan_phases
from distill.train import run

pytestmark = pytest.mark.usefixtures("single_thread")

LOSS_DIR = Path(__file__).resolve().parents[2] / "conf" / "loss"
BATCH = {
    "input_ids": torch.tensor([[2, 11, 12, 13, 3], [2, 21, 3, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    "labels": torch.tensor([0, 1]),
}
INPUTS = {k: BATCH[k] for k in ("input_ids", "attention_mask")}
# the preset's narrow sizes shrunk to the 32-wide, 2-head tiny teacher of tests/conftest.py
TINY = ["student.embedding_size=16", "student.intra_bottleneck_size=16", "student.intermediate_size=32"]
# fast_overrides picks student=micro, which beats the recipe's own choice; the tiny teacher has 4 layers:
# the recipe's phases for layers 5 and 6 go
SIX = ["experiment=mobilebert_sst2", "student=mobilebert_tiny", *TINY, "data.max_train_samples=16", "logger=none"]
RECIPE = [*SIX, "~phases.layer5", "~phases.layer6"]


def _teacher(hidden=48, layers=4, heads=2):
    torch.manual_seed(1)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def _student(teacher, **kw):
    torch.manual_seed(0)
    return mobilebert_student(teacher, **({"embedding_size": 16, "intra_bottleneck_size": 16,
                                           "intermediate_size": 32} | kw))


def _intermediate(student, teacher, layer, attention="distill.losses.AttentionKL", source="scores"):
    """The recipe's layer-k objective: tinybert_intermediate with explicit [[k, k]] maps, no projection."""
    pairs = {"strategy": "explicit", "pairs": [[layer, layer]]}
    with initialize_config_dir(config_dir=str(LOSS_DIR), version_base=None):
        cfg = compose(config_name="tinybert_intermediate")
    OmegaConf.set_struct(cfg, False)  # as the experiment's body merges over the composed preset
    cfg = OmegaConf.merge(cfg, {"terms": {"hidden": {"layer_map": pairs, "project": False},
                                          "attention": {"_target_": attention, "layer_map": pairs, "source": source}}})
    terms = {key: instantiate(node, _partial_=True)(student_config=student.config, teacher_config=teacher.config)
             for key, node in cfg.terms.items()}
    return instantiate(cfg, terms=terms)


def test_preset_takes_the_teachers_width_depth_heads_and_vocabulary(make_cfg, tiny_teacher):
    cfg = make_cfg("student=mobilebert_tiny", *TINY)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    student = build(cfg.student, "student", teacher=teacher)
    c, t = student.config, teacher.config
    assert type(student).__name__ == "MobileBertForSequenceClassification"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.vocab_size) == (
        t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.vocab_size)
    assert (c.true_hidden_size, c.embedding_size, c.num_feedforward_networks) == (16, 16, 4)
    blocks = self_attention_modules(student)  # what the hooked attention terms find
    assert len(blocks) == 4 and {b.num_attention_heads for b in blocks} == {2}
    assert {b.query.out_features for b in blocks} == {16}


def test_real_preset_over_the_minilm_geometry_is_under_15m_and_under_tiny(make_cfg):
    minilm = AutoConfig.from_pretrained(default_teacher_path())  # the offline MiniLM-L6 config, no weights read
    minilm.num_labels = 2
    with torch.device("meta"):
        teacher = AutoModelForSequenceClassification.from_config(minilm)
        student = build(make_cfg("student=mobilebert_tiny").student, "student", teacher=teacher)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.true_hidden_size) == (6, 384, 12, 192)
    # 30,522 × 128 word table + trigram lift 384 × 384 + 6 blocks; tiny has 14,350,874
    assert count_parameters(student) == 13_965_314
    blocks = self_attention_modules(student)
    assert len(blocks) == 6 and all(b.num_attention_heads == 12 and b.scaling == 16**-0.5 for b in blocks)


def test_embeddings_and_head_start_from_the_teacher():
    teacher = _teacher()
    student = _student(teacher).eval()
    s, t = student.mobilebert.embeddings, teacher.bert.embeddings
    for name in ("position_embeddings", "token_type_embeddings", "LayerNorm"):
        assert torch.equal(getattr(s, name).weight, getattr(t, name).weight)
    assert torch.equal(student.mobilebert.pooler.dense.weight, teacher.bert.pooler.dense.weight)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    with torch.no_grad():
        want = t(input_ids=BATCH["input_ids"])  # (B, T, H)
        pca = s(input_ids=BATCH["input_ids"])
        rand = _student(teacher, init_embeddings="random").mobilebert.embeddings(input_ids=BATCH["input_ids"])
    # 16 of 48 principal directions: far closer to the teacher's embedding output than a random table
    assert (pca - want).pow(2).mean() < 0.5 * (rand - want).pow(2).mean()


@pytest.mark.parametrize(("attention", "source"), [("distill.losses.AttentionKL", "scores"),
                                                   ("distill.losses.AttentionScoreMSE", "scores"),
                                                   ("distill.losses.AttentionKL", "attentions")])
def test_layer_k_transfer_trains_the_student(attention, source):
    teacher = _teacher()
    student = _student(teacher, attn_implementation="eager" if source == "attentions" else None)
    teacher.set_attn_implementation("eager")
    objective = _intermediate(student, teacher, 2, attention, source)
    objective.attach(student, teacher)
    need = objective.requires
    flags = {"output_hidden_states": "hidden_states" in need, "output_attentions": "attentions" in need}
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        with torch.no_grad():  # the teacher runs every step: the hooked terms release its Q/K after each loss
            t_out = teacher(**INPUTS, **flags)
        out = student(**INPUTS, **flags)
        loss, _ = objective(out, t_out, BATCH, step, 8)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:  # layer 2 and below get gradients, layer 3 (above the compared output) none
            layers = student.mobilebert.encoder.layer
            assert all(p.grad is not None for p in layers[1].parameters())
            assert all(p.grad is None for p in layers[2].parameters())
        optimizer.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and losses[-1] < 0.8 * losses[0]
    for term in objective.terms.values():
        if hasattr(term, "detach"):
            term.detach()


def _fit(student, teacher, objective, callback, steps=3):
    module = DistillationModule(student, teacher, get_task("sst2"), objective=objective,
                                optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        limit_val_batches=0)
    batches = [dict(BATCH) for _ in range(steps)]
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def test_freeze_below_freezes_the_embeddings_and_lower_layers_and_keeps_them_out_of_the_optimizer():
    teacher = _teacher()
    student = _student(teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = _fit(student, teacher, _intermediate(student, teacher, 3), FreezeBelow(layer=3))
    layers = student.mobilebert.encoder.layer
    frozen = [student.mobilebert.embeddings, layers[0], layers[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in (layers[2], layers[3], student.classifier) for p in m.parameters())
    in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for m in frozen for p in m.parameters()}
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    # only layer 3 moves: below it frozen, above it (layer 4, pooler, classifier) no gradient from a layer-3 loss
    assert changed and all(k.startswith("mobilebert.encoder.layer.2.") for k in changed)
    # then everything trainable again (the recipe's prediction phase): all of it moves under the logit loss
    with initialize_config_dir(config_dir=str(LOSS_DIR), version_base=None):
        pred = instantiate(compose(config_name="tinybert_pred"), terms={})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    _fit(student, teacher, pred, FreezeBelow(layer=1, embeddings=False))
    assert all(p.requires_grad for p in student.parameters())
    moved = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    parts = ["mobilebert.embeddings.", *(f"mobilebert.encoder.layer.{i}." for i in range(4)), "mobilebert.pooler.",
             "classifier."]
    assert all(any(k.startswith(part) for k in moved) for part in parts)


def test_recipe_transfers_one_layer_per_phase_then_trains_everything(make_cfg, tmp_path):
    cfg = make_cfg(*RECIPE)
    assert [cfg.phases[n].callbacks.freeze.layer for n in ("layer1", "layer2", "layer3", "layer4")] == [1, 2, 3, 4]
    metrics, _ = run(cfg)
    out = tmp_path / "run" / "phases"
    names = ["layer1", "layer2", "layer3", "layer4", "prediction"]
    states = [torch.load(out / f"{i + 1}-{n}" / "student.pt", weights_only=True) for i, n in enumerate(names)]
    assert all(json.loads((out / f"{i + 1}-{n}" / "done.json").read_text())["global_step"] > 0
               for i, n in enumerate(names))

    def changed(a, b):
        return {k for k in a if not torch.equal(a[k], b[k])}

    for k in (2, 3, 4):  # phase layer-k moves student layer k only
        moved = changed(states[k - 2], states[k - 1])
        assert moved and all(key.startswith(f"mobilebert.encoder.layer.{k - 1}.") for key in moved), k
    final = changed(states[3], states[4])
    for part in ("embeddings.word", "layer.0.", "layer.3.", "pooler", "classifier"):
        assert any(part in key for key in final), part
    assert 0.0 <= metrics["student_score"] <= 1.0
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert type(loaded).__name__ == "MobileBertForSequenceClassification"


def test_save_pretrained_loads_in_vanilla_transformers_with_identical_logits(tmp_path):
    student = _student(_teacher()).eval()
    student.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**INPUTS).logits, student(**INPUTS).logits)


@pytest.mark.parametrize(("kw", "match"), [
    ({"hidden_size": 64}, r"student.hidden_size=64 must equal the teacher's hidden size 48 for feature-map"),
    ({"num_hidden_layers": 3, "progressive": True},
     r"student.num_hidden_layers=3 must equal the teacher's 4 layers for progressive transfer"),
    ({"embedding_size": 64}, r"student.embedding_size=64 must not exceed student.hidden_size=48"),
    ({"num_attention_heads": 3}, r"intra_bottleneck_size=16 .* must be divisible by student.num_attention_heads=3"),
    ({"depth": 3}, r"student has unknown keys \['depth'\]"),
])
def test_wrong_settings_stop_with_one_sentence(kw, match):
    with pytest.raises(ConfigError, match=match):
        _student(_teacher(), **kw)


@pytest.mark.parametrize(("extra", "match"), [
    ([*RECIPE, "student.hidden_size=48"], "student.hidden_size=48 must equal the teacher's hidden size 32"),
    ([*RECIPE, "student.num_hidden_layers=5"], "student.num_hidden_layers=5 must equal the teacher's 4 layers"),
    (SIX, r"HiddenStateMSE.layer_map.pairs\[0\] names student layer 5, outside the allowed range 0..4"),  # 6-layer recipe, 4 layers
])
def test_recipe_mistakes_stop_at_planning_before_any_work(make_cfg, tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        plan_phases(make_cfg(*extra), tmp_path / "plan")
    assert not (tmp_path / "cache").exists()  # no teacher fine-tuned or loaded, no data tokenized


def test_freeze_layer_outside_the_student_is_refused():
    with pytest.raises(ConfigError, match=r"callbacks.freeze.layer=5 must be a layer of the student, 1..4"):
        freeze_below(_student(_teacher()), 5)
