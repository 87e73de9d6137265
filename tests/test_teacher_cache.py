"""Teacher-output cache: replayed outputs equal the live teacher's, keys, atomic writes, size limit, top-k."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from distill import teacher_cache as tc
from distill.blocks import build_objective
from distill.data.glue import GLUEDataModule
from distill.data.tasks import get_task
from distill.data.text import TextDataModule
from distill.errors import ConfigError
from distill.kernels.softmax_kl import softmax_kl
from distill.models.student import bert_student
from distill.models.teacher import load_classifier

LOSS = {
    "_target_": "distill.losses.DistillationObjective",
    "soft": {"_target_": "distill.losses.SoftTargetKL"}, "hard": {"_target_": "distill.losses.HardLabelLoss"},
    "alpha": 0.5, "temperature": 2.0,
    "terms": {
        "hidden": {"_target_": "distill.losses.HiddenStateMSE", "layer_map": "uniform"},
        "scores": {"_target_": "distill.losses.AttentionScoreMSE", "layer_map": "last_k"},
        "probs": {"_target_": "distill.losses.AttentionKL", "source": "attentions", "layer_map": "uniform"},
        "relation": {"_target_": "distill.losses.ValueRelationKL"},
    },
}


def settings(**kw):
    return OmegaConf.create({"cache": True, "cache_top_k": None, "cache_tail": "bucket", "cache_dtype": "float32",
                             "cache_max_gb": 1.0, **kw})


@pytest.fixture
def setup(glue_dir, tiny_teacher, tmp_path):
    def make(loss=LOSS, samples=24):
        torch.manual_seed(0)
        dm = GLUEDataModule("sst2", data_dir=str(glue_dir), tokenizer=str(tiny_teacher), batch_size=8,
                            max_length=32, max_train_samples=samples)
        teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
        teacher.set_attn_implementation("eager")
        student = bert_student(teacher, num_hidden_layers=2, hidden_size=24, num_attention_heads=2,
                               intermediate_size=48, init_embeddings="random")
        student.set_attn_implementation("eager")
        objective = build_objective(OmegaConf.create(loss), student, teacher)
        objective.attach(student, teacher)
        teacher.eval()
        return dm, teacher, student, objective

    return make


def losses(objective, student, teacher_out, batch):
    out = student(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch},
                  output_hidden_states=True, output_attentions=True)
    return objective(out, teacher_out, batch, 0, 10)[1]


def test_replayed_outputs_give_the_live_teachers_losses_for_every_term(setup, tmp_path):
    dm, teacher, student, objective = setup()
    cache = tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    assert cache.spec.hidden and cache.spec.attentions and cache.spec.captures  # every kind of output is stored
    student.eval()  # no dropout: both calls see the same student outputs
    for batch in list(dm.train_dataloader())[:2]:
        assert "idx" in batch
        with torch.no_grad():
            live_out = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                               output_hidden_states=True, output_attentions=True)
            live = losses(objective, student, live_out, batch)
            replay = cache.replay(batch)
            cached = losses(objective, student, replay, batch)
        torch.testing.assert_close(replay.logits, live_out.logits, rtol=0, atol=1e-6)
        for layer in cache.spec.hidden:
            keep = batch["attention_mask"].bool()
            torch.testing.assert_close(replay.hidden_states[layer][keep], live_out.hidden_states[layer][keep])
        for name in ("soft", "hard", "hidden", "scores", "probs", "relation"):
            torch.testing.assert_close(cached[name], live[name], rtol=1e-5, atol=1e-6, msg=name)


def test_only_the_mapped_layers_are_stored(setup, tmp_path):
    dm, teacher, student, objective = setup()
    spec = tc.cache_spec(objective, student, teacher, settings())
    # 4 teacher layers, 2 student layers: uniform maps student 1, 2 -> teacher 2, 4 (+ embeddings for hidden)
    assert spec.hidden == (0, 2, 4) and spec.attentions == (2, 4)
    # last_k: the last layers pair up (the scores read query and key, the relation the values)
    assert set(spec.captures) == {(4, "query"), (4, "key"), (4, "value")}


def test_float16_cache_is_close_and_half_the_size(setup, tmp_path):
    dm, teacher, student, objective = setup()
    full = tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    half = tc.prepare_teacher_outputs(settings(cache_dtype="float16"), tmp_path, objective, student, teacher, dm)
    assert full.folder != half.folder
    size = lambda f: sum(p.stat().st_size for p in f.glob("hidden_*.npy"))  # noqa: E731
    assert size(half.folder) < 0.6 * size(full.folder)
    batch = next(iter(dm.train_dataloader()))
    a, b = full.replay(batch), half.replay(batch)
    torch.testing.assert_close(b.hidden_states[2], a.hidden_states[2], rtol=2e-3, atol=2e-3)


def test_entry_is_reused_and_any_change_of_inputs_makes_a_new_one(setup, tmp_path, monkeypatch):
    dm, teacher, student, objective = setup()
    first = tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    monkeypatch.setattr(tc, "_record", lambda *a, **k: pytest.fail("a complete entry must be reused"))
    again = tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    assert again.folder == first.folder
    monkeypatch.undo()
    dm2, teacher2, student2, objective2 = setup(samples=20)  # other rows
    other_rows = tc.prepare_teacher_outputs(settings(), tmp_path, objective2, student2, teacher2, dm2)
    with torch.no_grad():
        teacher.classifier.weight.add_(1.0)  # other teacher weights
    other_weights = tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    assert len({first.folder, other_rows.folder, other_weights.folder}) == 3


def test_a_killed_recording_leaves_no_entry_and_no_temporary_folder(setup, tmp_path, monkeypatch):
    dm, teacher, student, objective = setup()

    def die(folder, *args):
        (folder / "hidden_0.npy").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tc, "_record", die)
    with pytest.raises(KeyboardInterrupt):
        tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    assert list((tmp_path / "teacher_outputs").iterdir()) == []


def test_a_cache_over_the_limit_is_refused_with_its_size_before_any_teacher_pass(setup, tmp_path, monkeypatch):
    dm, teacher, student, objective = setup()
    monkeypatch.setattr(tc, "_record", lambda *a, **k: pytest.fail("no teacher pass before the size check"))
    with pytest.raises(ConfigError, match=r"teacher.cache would take .* over teacher.cache_max_gb=1e-06"):
        tc.prepare_teacher_outputs(settings(cache_max_gb=1e-6), tmp_path, objective, student, teacher, dm)


def test_size_estimate_matches_the_files_written(setup, tmp_path):
    dm, teacher, student, objective = setup()
    cache = tc.prepare_teacher_outputs(settings(cache_dtype="float16"), tmp_path, objective, student, teacher, dm)
    lengths = np.diff(cache.offsets)
    on_disk = sum(p.stat().st_size for p in cache.folder.glob("*.npy"))
    estimate = tc.estimate_bytes(lengths, cache.spec, teacher)
    assert estimate <= on_disk <= estimate + 128 * len(list(cache.folder.glob("*.npy")))  # .npy headers only


def test_masked_text_is_not_cached_and_says_so_in_one_line(tiny_teacher, caplog):
    from transformers import AutoTokenizer

    dm = TextDataModule(AutoTokenizer.from_pretrained(str(tiny_teacher)), texts=["the movie", "a dog"], mask_prob=0.15)
    objective = SimpleNamespace(needs_teacher=True)
    with caplog.at_level(logging.INFO, logger="distill"):
        out = tc.prepare_teacher_outputs(settings(), None, objective, None, SimpleNamespace(training=False), dm)
    assert out is None
    assert "masked afresh every epoch" in caplog.text and "the teacher runs on every batch" in caplog.text


def test_cache_off_or_no_teacher_terms_means_no_cache(setup, tmp_path):
    dm, teacher, student, objective = setup()
    assert tc.prepare_teacher_outputs(settings(cache=False), tmp_path, objective, student, teacher, dm) is None
    assert tc.prepare_teacher_outputs(settings(), tmp_path, SimpleNamespace(needs_teacher=False), student, teacher,
                                      dm) is None


# ---- top-k logits --------------------------------------------------------------------------------------------
def test_top_k_with_every_class_reproduces_the_logits():
    logits = torch.randn(5, 7)
    values, indices = logits.topk(7, dim=-1)
    torch.testing.assert_close(tc.dense_logits(values, indices, torch.logsumexp(logits, -1), 7), logits)


def test_bucket_tail_keeps_the_top_k_probabilities_and_the_tail_mass_exactly():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0]])
    values, indices = logits.topk(2, dim=-1)
    dense = tc.dense_logits(values, indices, torch.logsumexp(logits, -1), 5, "bucket")
    p, q = logits.softmax(-1), dense.softmax(-1)
    torch.testing.assert_close(q[0, :2], p[0, :2])
    torch.testing.assert_close(q[0, 2:], p[0, 2:].sum().expand(3) / 3)  # the tail: one flat bucket


def test_renormalized_tail_is_the_teacher_over_its_top_k_and_kl_matches_by_hand():
    t = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    s = torch.tensor([[0.5, 0.2, 0.1, 0.0]])
    values, indices = t.topk(2, dim=-1)
    dense = tc.dense_logits(values, indices, torch.logsumexp(t, -1), 4, "renormalize")
    p = torch.tensor([[1.0, torch.e**-1]]) / (1 + torch.e**-1)  # softmax of [2, 1]
    log_q = s.log_softmax(-1)[:, :2]
    expected = (p * (p.log() - log_q)).sum()
    torch.testing.assert_close(softmax_kl(s, dense, 1.0), expected)


def test_bucket_kl_equals_the_dense_kl_when_the_tail_is_flat():
    # a teacher whose non-top-k logits are equal: the bucket reconstruction is exact, so is the loss
    t = torch.tensor([[4.0, 2.0, -1.0, -1.0, -1.0], [1.0, 3.0, 0.0, 0.0, 0.0]])
    s = torch.randn(2, 5)
    values, indices = t.topk(2, dim=-1)
    dense = tc.dense_logits(values, indices, torch.logsumexp(t, -1), 5, "bucket")
    for temperature in (1.0, 2.0, 4.0):
        torch.testing.assert_close(softmax_kl(s, dense, temperature), softmax_kl(s, t, temperature))


def test_top_k_cache_records_values_indices_and_logsumexp(setup, tmp_path):
    dm, teacher, student, objective = setup(loss={"_target_": "distill.losses.DistillationObjective",
                                                  "soft": {"_target_": "distill.losses.SoftTargetKL"}})
    cache = tc.prepare_teacher_outputs(settings(cache_top_k=1), tmp_path, objective, student, teacher, dm)
    assert (cache.folder / "topk_values.npy").is_file() and not (cache.folder / "logits.npy").exists()
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        live = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    # 2 classes, top 1 + the exact tail mass: the 2-class distribution is reproduced exactly
    torch.testing.assert_close(cache.replay(batch).logits.softmax(-1), live.softmax(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("cache", "yes", "teacher.cache='yes' must be true or false"),
    ("cache_top_k", 0, "teacher.cache_top_k=0 must be a whole number >= 1"),
    ("cache_dtype", "int8", "teacher.cache_dtype='int8' is not allowed; use float16 or float32"),
    ("cache_tail", "drop", "teacher.cache_tail='drop' is not allowed; use bucket or renormalize"),
    ("cache_max_gb", -1, "teacher.cache_max_gb=-1 must be a positive number"),
])
def test_bad_cache_settings_get_one_sentence(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tc.check_settings(settings(**{key: value}))


def test_a_run_with_the_cache_trains_the_same_student_as_one_running_the_teacher(make_cfg, tmp_path, caplog):
    from safetensors.torch import load_file

    from distill.train import run

    common = ("loss=tinybert_intermediate", "ckpt_path=null", "teacher.cache_dtype=float32", "trainer.max_epochs=2")
    with caplog.at_level(logging.INFO, logger="distill"):
        cached_metrics, _ = run(make_cfg(*common, "teacher.cache=true", output="cached"))
    assert "teacher.cache: recording" in caplog.text
    live_metrics, _ = run(make_cfg(*common, output="live"))
    cached = load_file(tmp_path / "cached" / "student" / "model.safetensors")
    live = load_file(tmp_path / "live" / "student" / "model.safetensors")
    for name, weight in live.items():
        torch.testing.assert_close(cached[name], weight, rtol=1e-5, atol=1e-6, msg=name)
    assert cached_metrics["student_score"] == live_metrics["student_score"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distill"):
        run(make_cfg(*common, "teacher.cache=true", output="again"))
    assert "teacher.cache: reusing" in caplog.text


# ---- masked-LM distillation: the teacher's logits at the statically masked positions, dense or top-k ----------------
MLM_TEXTS = ["the movie was good", "a dog and a cat", "very very boring film", "good", "the film was a movie"] * 4


@pytest.fixture
def mlm_setup(tiny_mlm_teacher):
    from transformers import AutoTokenizer

    from distill.models.mlm import classifier_view, load_mlm_teacher, masked_lm_student
    from distill.models.student import distil_student

    def make():
        tok = AutoTokenizer.from_pretrained(str(tiny_mlm_teacher))
        dm = TextDataModule(tok, texts=MLM_TEXTS, max_length=16, batch_size=4, mask_prob=0.3, seed=0, static_masking=True)
        teacher = load_mlm_teacher(str(tiny_mlm_teacher))
        torch.manual_seed(0)
        student = masked_lm_student(distil_student(classifier_view(teacher)), teacher)
        loss = OmegaConf.load("conf/loss/distilbert_mlm.yaml")
        loss.soft.backend = "torch"
        objective = build_objective(loss, student, teacher)
        objective.attach(student, teacher)
        return dm, teacher, student, objective

    return make


def _mlm_parts(objective, student, teacher_out, batch):
    out = student(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, output_hidden_states=True)
    return objective(out, teacher_out, batch, 0, 10)[1]


def _live(teacher, batch):
    return teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, output_hidden_states=True)


@pytest.mark.parametrize("k", [None, "V-1", "V"])
def test_mlm_cache_at_masked_positions_gives_the_live_teachers_losses(mlm_setup, tmp_path, k):
    """Dense, top-(V-1) (one tail entry: the bucket is exact) and top-V (stored dense) give the dense loss."""
    dm, teacher, student, objective = mlm_setup()
    vocab = teacher.config.vocab_size
    top_k = {None: None, "V-1": vocab - 1, "V": vocab}[k]
    cache = tc.prepare_teacher_outputs(settings(cache_top_k=top_k), tmp_path, objective, student, teacher, dm)
    assert cache.spec.positions == "masked" and cache.spec.hidden == (4,)
    masked = sum(sum(v != -100 for v in r["mlm_labels"]) for r in dm.train_set())
    files = {p.name: np.load(p, mmap_mode="r").shape for p in cache.folder.glob("*.npy")}
    assert "logits.npy" not in files and "topk_values.npy" not in files  # nothing per example
    if k == "V-1":
        assert files["positions_topk_values.npy"] == (masked, vocab - 1) and files["positions_logsumexp.npy"] == (masked,)
    else:
        assert files["positions_logits.npy"] == (masked, vocab)
    student.eval()
    for batch in dm.train_dataloader():
        with torch.no_grad():
            live, cached = _mlm_parts(objective, student, _live(teacher, batch), batch), \
                _mlm_parts(objective, student, cache.replay(batch), batch)
        for name in ("soft", "hard", "cosine"):
            torch.testing.assert_close(cached[name], live[name], rtol=1e-5, atol=1e-6, msg=name)


def _top_k_reference(t: torch.Tensor, s: torch.Tensor, k: int, tail: str, temperature: float) -> torch.Tensor:
    """Plain float64 reference: the teacher's top-k probabilities, the rest of its mass spread flat over the other
    V - k entries (bucket) or dropped (renormalize); both sides at T, KL per row, mean over rows, times T²."""
    p = t.double().softmax(-1)  # (M, V)
    top = p.topk(k, dim=-1)
    target = torch.zeros_like(p)
    if tail == "bucket":
        target += ((1 - top.values.sum(-1)) / (p.shape[-1] - k))[:, None]
    target.scatter_(1, top.indices, top.values)
    target = (target / target.sum(-1, keepdim=True)).log().div(temperature).softmax(-1)
    log_q = (s.double() / temperature).log_softmax(-1)
    return (torch.xlogy(target, target) - target * log_q).sum(-1).mean() * temperature**2


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_mlm_top_k_loss_matches_a_plain_reference_and_nears_the_dense_loss_as_k_grows(mlm_setup, tmp_path, caplog, tail):
    dm, teacher, student, objective = mlm_setup()
    masked = sum(sum(v != -100 for v in r["mlm_labels"]) for r in dm.train_set())
    dm.index_train_set()
    batch = dm.collate(dm.train_set()[:6])  # rows with their idx, as the cache's batches have them
    rows = batch["mlm_mask"]
    with torch.no_grad():
        t = _live(teacher, batch).logits  # (B, T, V)
    s = torch.randn(t.shape, generator=torch.Generator().manual_seed(0)) * t.std()  # a student far from the teacher
    dense = objective.soft(SimpleNamespace(logits=s), SimpleNamespace(logits=t), batch, 2.0).item()
    gaps = []
    for k in (4, 16, 64):  # of a 66-word vocabulary
        with caplog.at_level(logging.INFO, logger="distill"):
            cache = tc.prepare_teacher_outputs(settings(cache_top_k=k, cache_tail=tail), tmp_path, objective, student,
                                               teacher, dm)
        assert f"teacher.cache: recording top-{k} logits at {masked} masked positions" in caplog.text  # size first
        on_disk = sum(p.stat().st_size for p in cache.folder.glob("*.npy"))
        estimate = tc.estimate_bytes(np.diff(cache.offsets), cache.spec, teacher, np.diff(cache.pos_offsets))
        assert estimate <= on_disk <= estimate + 128 * len(list(cache.folder.glob("*.npy")))
        cached = objective.soft(SimpleNamespace(logits=s), cache.replay(batch), batch, 2.0)
        assert torch.isfinite(cached)
        assert cached.item() == pytest.approx(_top_k_reference(t[rows], s[rows], k, tail, 2.0).item(), rel=1e-5)
        gaps.append(abs(cached.item() - dense))
    assert gaps[0] > gaps[1] > gaps[2]  # closer to the dense loss with every larger k
    if tail == "bucket":  # this teacher is nearly flat (top 4 of 66 hold ~8% of the mass), the bucket still close
        assert gaps[0] < 0.5 * dense


# ---- DDP: rank 0 records, the other ranks wait for it and read it (in one process: the helpers) -----------------------
def _as_rank(monkeypatch, rank: int):
    from distill import teacher_cache_sync as sync

    monkeypatch.setattr(tc, "is_global_zero", lambda: rank == 0)
    monkeypatch.setattr(sync, "is_global_zero", lambda: rank == 0)
    return sync


def test_without_a_process_group_another_rank_waits_for_rank_zeros_entry_and_never_records(setup, tmp_path, monkeypatch):
    import shutil
    import threading
    import time

    dm, teacher, student, objective = setup()
    zero = tc.prepare_teacher_outputs(settings(), tmp_path / "zero", objective, student, teacher, dm)
    sync = _as_rank(monkeypatch, 1)
    monkeypatch.setattr(sync, "POLL_S", 0.05)
    monkeypatch.setattr(tc, "_record", lambda *a, **k: pytest.fail("only rank 0 records"))
    final = tmp_path / "one" / "teacher_outputs" / zero.folder.name

    def rank_zero_publishes():  # as rank 0 does: the whole folder appears at once, 0.5 s later
        time.sleep(0.5)
        shutil.copytree(zero.folder, final.parent / ".copy")
        (final.parent / ".copy").rename(final)

    final.parent.mkdir(parents=True)
    publisher = threading.Thread(target=rank_zero_publishes)
    start = time.perf_counter()
    publisher.start()
    one = tc.prepare_teacher_outputs(settings(), tmp_path / "one", objective, student, teacher, dm)
    publisher.join()
    assert one.folder == final and time.perf_counter() - start >= 0.5
    batch = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(one.replay(batch).hidden_states[2], zero.replay(batch).hidden_states[2])


@pytest.mark.parametrize("rank, present, expected", [
    (0, False, ["record", "barrier"]),  # rank 0 records, then releases the others
    (1, True, ["barrier"]),  # another rank only waits, then reads rank 0's entry
    (1, False, ["barrier", "record"]),  # ... unless its cache folder is not rank 0's (node-local disks)
])
def test_with_a_process_group_every_rank_passes_one_barrier_after_rank_zero_recorded(setup, tmp_path, monkeypatch,
                                                                                     rank, present, expected):
    dm, teacher, student, objective = setup()
    if present:
        tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    events, record = [], tc._record
    sync = _as_rank(monkeypatch, rank)
    monkeypatch.setattr(sync.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sync, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(tc, "_record", lambda *a, **k: (events.append("record"), record(*a, **k)))
    cache = tc.prepare_teacher_outputs(settings(), tmp_path, objective, student, teacher, dm)
    assert events == expected and (cache.folder / "meta.json").is_file()


@pytest.mark.slow
def test_mlm_general_phase_with_static_masks_and_the_cache_trains_the_same_student(make_cfg, tmp_path, caplog,
                                                                                  tiny_mlm_teacher):
    from safetensors.torch import load_file

    from distill.train import run

    common = ("experiment=mlm_distill", "stage=general", f"teacher.name_or_path={tiny_mlm_teacher}", "student=distil",
              "phases.general.data.max_samples=24", "phases.general.cache=false", "phases.general.max_epochs=2",
              "phases.general.loss.soft.backend=torch", "teacher.cache_dtype=float32", "logger=none")
    weights = {}
    for name, extra in (("cached", ("teacher.cache=true", "phases.general.data.static_masking=true")),
                        ("live", ("phases.general.data.static_masking=true",)),
                        ("dynamic", ("teacher.cache=true",))):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="distill"):
            run(make_cfg(*common, *extra, output=name))
        weights[name] = load_file(tmp_path / name / "general_student" / "model.safetensors")
        if name == "cached":
            assert "teacher.cache: recording logits at" in caplog.text and "masked positions" in caplog.text
        if name == "dynamic":  # masks drawn every batch: one line, and the run goes on with the live teacher
            lines = [r.message for r in caplog.records if "teacher.cache" in r.message]
            assert len(lines) == 1 and "masked afresh every epoch" in lines[0] and "runs on every batch" in lines[0]
    for key, value in weights["live"].items():
        torch.testing.assert_close(weights["cached"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(weights["dynamic"][k], v) for k, v in weights["live"].items())  # other masks
