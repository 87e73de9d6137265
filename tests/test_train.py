"""End-to-end runs of train.py on tiny models and fixtures: outputs, teacher cache, eval, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_overrides, make_tiny_bert
from transformers import pipeline

from distill.train import run


def test_distill_run_leaves_checkpoints_student_and_report(make_cfg, tmp_path):
    metrics, _ = run(make_cfg())
    out = tmp_path / "run"
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (out / "checkpoints").iterdir()}
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["models"]}
    assert set(rows) == {"teacher", "student"}
    assert rows["student"]["retention"] == pytest.approx(rows["student"]["score"] / rows["teacher"]["score"])
    assert metrics["student_score"] == rows["student"]["score"]
    # the shipped student loads with plain transformers and scores what the report says
    clf = pipeline("text-classification", model=str(out / "student"), device=-1)
    assert rows["student"]["parameters"] == sum(p.numel() for p in clf.model.parameters())
    dev = [line.split("\t") for line in (Path(make_cfg().paths.data_dir) / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    preds = [int(p["label"].split("_")[-1]) for p in clf([s for s, _ in dev])]
    acc = sum(p == int(y) for p, (_, y) in zip(preds, dev)) / len(dev)
    assert acc == pytest.approx(rows["student"]["score"])


def test_teacher_is_finetuned_once_then_reused(make_cfg, tmp_path, caplog):
    base = ["teacher.finetune=true", "teacher.finetune_args.max_epochs=1", "stage=teacher"]
    metrics, objs = run(make_cfg(*base, output="t1"))
    cached = Path(objs["teacher_path"])
    assert (cached / "config.json").is_file() and (cached / "distill_teacher.json").is_file()
    assert "teacher_accuracy" in metrics
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="distill"):
        _, again = run(make_cfg(*base, output="t2"))
    assert again["teacher_path"] == str(cached) and "Reusing the fine-tuned teacher" in caplog.text
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    _, other = run(make_cfg(*base, "teacher.finetune_args.lr=3e-4", output="t3"))
    assert other["teacher_path"] != str(cached)  # different settings, different cache entry


def test_eval_stage_reports_saved_student(make_cfg, tmp_path, tiny_teacher):
    run(make_cfg())
    student = tmp_path / "run" / "student"
    metrics, objs = run(make_cfg("stage=eval", f"eval.model_path={student}", f"eval.teacher_path={tiny_teacher}",
                                 output="eval"))
    first = json.loads((tmp_path / "run" / "report.json").read_text())
    second = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert second["models"][1]["score"] == first["models"][1]["score"]
    assert "student_retention" in metrics


def test_resume_continues_from_last_checkpoint(make_cfg, tmp_path):
    run(make_cfg("trainer.max_epochs=1"))
    first = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    (tmp_path / "run" / "report.json").unlink()  # as if killed before finishing
    run(make_cfg("trainer.max_epochs=2"))  # ckpt_path=auto finds this run's last.ckpt
    second = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert second["epoch"] > first["epoch"]
    assert second["global_step"] == 2 * first["global_step"]


def _cli(args, env_extra=None, cwd=ROOT, **kw):
    env = {**os.environ, "TRITON_INTERPRET": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _step_of(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "student" / "model.safetensors")


@pytest.mark.slow
def test_killed_run_resumes_automatically_and_ends_like_an_uninterrupted_run(glue_dir, tiny_teacher, tmp_path):
    """SIGKILL a CLI run inside its second epoch, after step 37: its last checkpoint is step 35, its best one
    (by val/score) an earlier one. The same command again resumes it in a new run folder and ends with the same last
    weights, the same shipped student (the best checkpoint, carried over from the killed run's folder) and the
    same dev metric as the same run never killed (deterministic CPU settings)."""
    common = [*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), "data.max_train_samples=40",
              "data.batch_size=2", "trainer.max_epochs=3", "logger=none", "trainer.deterministic=true",
              "+callbacks.model_checkpoint.every_n_train_steps=5", "student=tiny",
              "student.prune=null"]  # 20 steps per epoch
    kill = ["+callbacks.kill._target_=kill_job.KillJobAfterStep", "+callbacks.kill.step=37",
            f"+callbacks.kill.marker={tmp_path / 'killed'}"]
    args = [*common, *kill, f"paths.log_dir={tmp_path / 'logs'}"]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = _cli(args, env, start_new_session=True)  # KillJobAfterStep kills its whole process group
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL and (tmp_path / "killed").is_file(), err[-2000:]
    (killed,) = [p.parent for p in (tmp_path / "logs").glob("**/checkpoints/last.ckpt")]
    assert not (killed.parent / "report.json").exists()
    best_killed = _step_of(killed / "best.ckpt")
    assert _step_of(killed / "last.ckpt") == 35 and best_killed < 35  # the best is not the checkpoint resumed from
    time.sleep(1.1)  # a new timestamped run folder
    out, err = _cli(args, env).communicate(timeout=300)
    assert f"Resuming from {killed / 'last.ckpt'}" in err + out, err[-2000:]
    (report,) = list((tmp_path / "logs").glob("**/report.json"))
    resumed = report.parent
    assert resumed != killed.parent
    last = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 60

    out, err = _cli([*common, f"paths.log_dir={tmp_path / 'whole'}"]).communicate(timeout=300)
    (whole_report,) = list((tmp_path / "whole").glob("**/report.json"))
    whole = whole_report.parent
    whole_last = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(whole_last["state_dict"][k], last["state_dict"][k]) for k in whole_last["state_dict"])
    # the shipped student: the best checkpoint, one from before the kill (without carrying it over into the new
    # folder, the resumed run's first checkpoint after the resume became its best)
    best_whole = _step_of(whole / "checkpoints" / "best.ckpt")
    assert best_whole == best_killed, "the kill must come after the uninterrupted run's best checkpoint"
    assert _step_of(resumed / "checkpoints" / "best.ckpt") == best_whole
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    score = lambda path: {r["model"]: r["score"] for r in json.loads(path.read_text())["models"]}["student"]  # noqa: E731
    assert score(report) == score(whole_report)


BAD_INPUTS = [
    (["loss.temperature=0"], "loss.temperature must be > 0"),
    (["loss.alpha=1.5"], "loss.alpha must be in [0, 1]"),
    (["paths.data_dir=/nonexistent/glue"], "has no SST-2/ folder"),
    (["data=stsb"], "has 2 labels but task 'stsb' needs 1"),
    (["teacher.name_or_path=/nonexistent/model"], "teacher.name_or_path='/nonexistent/model' is not a local model"),
    (["data.max_train_samples=-3"], "data.max_train_samples=-3 must be a positive number"),
    (["student.hidden_size=100", "student.num_attention_heads=3"], "must be divisible by"),
    (["experiment=tinybert_sst2", "phases.general.seed=first"], "phases.general.seed='first' must be an integer"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be a positive number"),
    (["trainer.max_epochs=-3"], "trainer.max_epochs=-3 must be a positive whole number"),
    (["data.max_train_samples=many"], "data.max_train_samples='many' must be a positive number"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path='/nonexistent/last.ckpt' is not a file; give a checkpoint"),
    # throughput options (#16): cache, sampler, padding, loader workers, precision, compile
    (["teacher.cache=maybe"], "teacher.cache='maybe' must be true or false"),
    (["teacher.cache=true", "teacher.cache_top_k=0"], "teacher.cache_top_k=0 must be a whole number >= 1"),
    (["teacher.cache=true", "teacher.cache_max_gb=0"], "teacher.cache_max_gb=0 must be a positive number"),
    (["teacher.cache=true", "teacher.cache_max_gb=1e-9"], "teacher.cache would take"),
    (["experiment=tinybert_sst2", "+phases.general.data.static_masking=maybe"], "phases.general.data.static_masking='maybe' must be true or false"),
    (["experiment=tinybert_sst2", "+phases.general.data.static_masking=true"], "phases.general.data.static_masking=true needs phases.general.data.mask_prob"),
    (["data/sampler=length_grouped", "data.sampler.group_batches=0"], "data.sampler.group_batches=0 must be a whole"),
    (["data.padding=shortest"], "data.padding='shortest' is not allowed; use longest or max_length"),
    (["data.num_workers=-1"], "data.num_workers=-1 must be a whole number >= 0"),
    (["trainer.precision=8-mixed"], "trainer.precision='8-mixed' is not allowed"),
    (["trainer.precision=16-mixed"], "trainer.precision=16-mixed needs a GPU"),
    (["compile.enabled=true", "compile.backend=fast"], "compile.backend='fast' is not a torch.compile backend"),
    (["compile.mode=turbo"], "compile.mode='turbo' is not allowed"),
    # multi-process settings (#16)
    (["trainer.strategy=dpp"], "trainer.strategy='dpp' is not allowed; use auto, one of"),
    (["trainer.devices=0"], "trainer.devices=0 must be a positive number of devices"),
    (["trainer.devices=two"], "trainer.devices='two' must be a positive number of devices"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0 must be a positive whole number of machines"),
    (["trainer=fsdp", "trainer.accelerator=cpu"], "trainer.strategy.process_group_backend=nccl runs on CUDA GPUs only"),
    (["trainer=fsdp_cpu", "trainer.strategy._target_=lightning.pytorch.strategies.FSDPStrategy"],
     "runs on CUDA GPUs only (Lightning's FSDP)"),
    # vocabulary trimming during training (#15)
    (["student.trim_vocab=yes please"], "student.trim_vocab='yes please' must be true or false"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["trainer=ddp"], "trainer.accelerator=gpu needs a CUDA GPU and this machine has none"))


def _main_in_process(args, monkeypatch, capsys):
    """Run ``train.py`` in this process (as the CLI does) and return (exit code, stderr)."""
    import importlib.util

    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    # named __main__ so that Hydra finds conf/ next to train.py, exactly as `python train.py` does
    spec = importlib.util.spec_from_file_location("__main__", ROOT / "train.py")
    with pytest.raises(SystemExit) as exc:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    GlobalHydra.instance().clear()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[m[:24] for _, m in BAD_INPUTS])
def test_bad_input_gives_one_sentence_and_exit_2(glue_dir, tiny_teacher, tmp_path, overrides, message,
                                                  monkeypatch, capsys):
    args = [*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), f"paths.log_dir={tmp_path}", *overrides]
    code, err = _main_in_process(args, monkeypatch, capsys)
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not list(tmp_path.glob("**/checkpoints"))  # stopped before any training


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"not a checkpoint at all"])
def test_corrupt_checkpoint_gets_one_sentence(glue_dir, tiny_teacher, tmp_path, monkeypatch, capsys, content):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    code, err = _main_in_process([*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), f"paths.log_dir={tmp_path}",
                                  f"ckpt_path={bad}"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert f"ckpt_path='{bad}' is not a readable checkpoint" in line and "truncated or corrupt" in line


def test_malformed_tsv_row_names_file_and_line(glue_dir, tiny_teacher, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "glue"
    (bad / "SST-2").mkdir(parents=True)
    (bad / "SST-2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbroken row without label\n")
    (bad / "SST-2" / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    code, err = _main_in_process([*fast_overrides(bad, tiny_teacher, tmp_path / "cache"), f"paths.log_dir={tmp_path}"],
                                 monkeypatch, capsys)
    assert code == 2
    assert f"error: {bad / 'SST-2' / 'train.tsv'}:3: malformed row" in err


@pytest.mark.parametrize("override, option", [("student=huge", "tiny"), ("stage=serve", "distill")])
def test_unknown_preset_is_named_with_options(tmp_path, override, option):
    proc = _cli([override, f"paths.log_dir={tmp_path}"])
    _, err = proc.communicate(timeout=120)
    group = override.split("=")[0]
    assert proc.returncode != 0
    assert f"Could not find '{group}/{override.split('=')[1]}'" in err and option in err and "Traceback" not in err


def test_mismatched_student_vocab_is_refused(glue_dir, tiny_teacher, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other"
    make_tiny_bert(other, layers=1)
    from transformers import AutoModelForSequenceClassification, BertConfig

    AutoModelForSequenceClassification.from_config(BertConfig(vocab_size=999, hidden_size=16, num_hidden_layers=1,
                                                              num_attention_heads=2, intermediate_size=32)).save_pretrained(other)
    code, err = _main_in_process([*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), f"paths.log_dir={tmp_path}",
                                  "student=pretrained", f"student.name_or_path={other}"], monkeypatch, capsys)
    assert code == 2 and "student vocabulary (999 tokens) does not match the teacher's" in err


def test_auto_resume_needs_the_same_composed_config(tmp_path):
    """ckpt_path=auto adopts an unfinished run only when command line *and* composed config match: a run
    whose preset files changed since (same overrides) must start fresh, not load a stale checkpoint."""
    from distill.checkpoint import find_resume_checkpoint

    def run_dir(name, overrides, config, finished=False):
        d = tmp_path / "runs" / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(overrides)
        (d / ".hydra" / "config.yaml").write_text(config)
        (d / "checkpoints").mkdir()
        if name != "me":
            (d / "checkpoints" / "last.ckpt").write_bytes(b"x")
        if finished:
            (d / "report.json").write_text("{}")
        return d

    stale = run_dir("stale", "- student=tiny\n", "student:\n  init_embeddings: random\n")
    same = run_dir("same", "- student=tiny\n", "student:\n  init_embeddings: teacher_pca\n")
    run_dir("done", "- student=tiny\n", "student:\n  init_embeddings: teacher_pca\n", finished=True)
    me = run_dir("me", "- student=tiny\n", "student:\n  init_embeddings: teacher_pca\n")
    assert find_resume_checkpoint("auto", me, tmp_path / "runs") == str(same / "checkpoints" / "last.ckpt")
    (same / "checkpoints" / "last.ckpt").unlink()
    assert find_resume_checkpoint("auto", me, tmp_path / "runs") is None  # the stale one is never taken
    assert stale.is_dir()
    assert find_resume_checkpoint(None, me, tmp_path / "runs") is None


def test_non_finite_loss_stops_with_the_step_and_term_and_keeps_the_last_checkpoint(make_cfg, tmp_path, monkeypatch):
    from distill.errors import TrainingError
    from distill.losses.hard import HardLabelLoss

    real, calls = HardLabelLoss.forward, []

    def poisoned(self, *args):
        calls.append(1)
        value = real(self, *args)
        return value * float("nan") if len(calls) == 7 else value  # step 6: the 3rd of epoch 2 (4 steps each)

    monkeypatch.setattr(HardLabelLoss, "forward", poisoned)
    with pytest.raises(TrainingError) as err:
        run(make_cfg("+callbacks.model_checkpoint.every_n_train_steps=1", "trainer.max_epochs=2", "logger=none"))
    message = str(err.value)
    assert "the training loss became nan at step 6 (hard = nan)" in message and "\n" not in message
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6  # written after step 5, the last good one; nothing of the bad step
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_crashed_run_resumed_mid_epoch_ends_exactly_like_an_uninterrupted_one(make_cfg, tmp_path, monkeypatch):
    """Stop a run in the middle of its second epoch, resume it from its last checkpoint: same batches, same
    dropout, same optimizer and schedule state — bit-identical final weights and the same dev metric.
    (Without the loader's saved position, or without the generators' states, the weights differ.)"""
    from distill.errors import TrainingError
    from distill.losses.hard import HardLabelLoss

    args = ("data.max_train_samples=40", "data.batch_size=4", "trainer.max_epochs=3", "logger=none",
            "+callbacks.model_checkpoint.every_n_train_steps=3")  # dropout on (the teacher config's 0.1)
    whole, _ = run(make_cfg(*args, output="whole"))

    real, calls = HardLabelLoss.forward, []

    def crash(self, *a):
        calls.append(1)
        return real(self, *a) * (float("nan") if len(calls) == 17 else 1.0)  # step 16: in epoch 2 (10 steps each)

    monkeypatch.setattr(HardLabelLoss, "forward", crash)
    with pytest.raises(TrainingError):
        run(make_cfg(*args, output="resumed"))
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15
    monkeypatch.setattr(HardLabelLoss, "forward", real)
    resumed, _ = run(make_cfg(*args, output="resumed"))  # ckpt_path=auto: this run's last.ckpt (step 15)

    assert resumed["student_score"] == whole["student_score"]
    # the last weights, not the shipped student (best by val/score: maybe from before the crash)
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True) for d in ("whole", "resumed"))
    assert a["global_step"] == b["global_step"] == 30
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
