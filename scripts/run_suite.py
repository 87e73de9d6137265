"""Run named sets of train.py configurations and tabulate their reports (accuracy, size, speed).

    python scripts/run_suite.py objectives [--extra data.max_train_samples=2000 ...]
    python scripts/run_suite.py quant
    python scripts/run_suite.py glue --tasks sst2,mrpc

Every run shares one cache folder (``paths.cache_dir``), so the teacher is fine-tuned once per task
and reused. Each configuration's command, wall time and report rows go to
``docs/benchmarks/<suite>.{md,json}`` with the hardware and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_main_job import cpu_name, placement  # noqa: E402

# suite → list of (label, overrides). Same student size and number of steps within a comparison.
SUITES: dict[str, list[tuple[str, list[str]]]] = {
    "objectives": [
        ("tiny, CE only", ["student=tiny", "loss=ce"]),
        ("tiny, soft KL + CE", ["student=tiny", "loss=kd"]),
        ("tiny, TinyBERT recipe (general + 2 phases)", ["experiment=tinybert_sst2", "phases.general.data.max_samples=20000"]),
        ("tiny, TinyBERT recipe + augmentation", ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=20000"]),
        # the augmentation recipe takes 1125 task steps (12000 rows x 3 epochs / 32): the baselines at that length
        ("tiny, soft KL + CE, 1125 steps", ["student=tiny", "loss=kd", "trainer.max_epochs=9"]),
        ("tiny, CE only, 1125 steps", ["student=tiny", "loss=ce", "trainer.max_epochs=9"]),
        # a second seed for the comparison that decides the recipe's margin (init, dropout, batch order)
        ("tiny, TinyBERT recipe + augmentation, seed 1", ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=20000", "seed=1"]),
        ("tiny, soft KL + CE, 1125 steps, seed 1", ["student=tiny", "loss=kd", "trainer.max_epochs=9", "seed=1"]),
        ("tiny, CE only, 1125 steps, seed 1", ["student=tiny", "loss=ce", "trainer.max_epochs=9", "seed=1"]),
        # TinyBERT's from-scratch embeddings instead of the teacher's projected ones (the default)
        ("tiny, soft KL + CE, random embeddings", ["student=tiny", "loss=kd", "student.init_embeddings=random"]),
        # general distillation on every GLUE training sentence in the data folder (97,617) instead of 20,000;
        # the seed-1 run starts from that same general student (phases.general.seed=42), as TinyBERT reuses one
        ("tiny, TinyBERT recipe + augmentation, general on all GLUE sentences",
         ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=null"]),
        ("tiny, TinyBERT recipe + augmentation, general on all GLUE sentences, seed 1",
         ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=null", "phases.general.seed=42", "seed=1"]),
        # a third seed of the deciding comparison (same general student, new teacher / augmentation / student)
        ("tiny, TinyBERT recipe + augmentation, general on all GLUE sentences, seed 2",
         ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=null", "phases.general.seed=42", "seed=2"]),
        ("tiny, soft KL + CE, 1125 steps, seed 2", ["student=tiny", "loss=kd", "trainer.max_epochs=9", "seed=2"]),
        ("tiny, CE only, 1125 steps, seed 2", ["student=tiny", "loss=ce", "trainer.max_epochs=9", "seed=2"]),
        ("tiny, TinyBERT recipe + augmentation, general on all GLUE sentences, seed 3",
         ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=null", "phases.general.seed=42", "seed=3"]),
        ("tiny, soft KL + CE, 1125 steps, seed 3", ["student=tiny", "loss=kd", "trainer.max_epochs=9", "seed=3"]),
        ("tiny, CE only, 1125 steps, seed 3", ["student=tiny", "loss=ce", "trainer.max_epochs=9", "seed=3"]),
        # the default length (375 steps) at seeds 1 and 2: is soft KL + CE's edge over CE only more than seed noise?
        ("tiny, soft KL + CE, seed 1", ["student=tiny", "loss=kd", "seed=1"]),
        ("tiny, CE only, seed 1", ["student=tiny", "loss=ce", "seed=1"]),
        ("tiny, soft KL + CE, seed 2", ["student=tiny", "loss=kd", "seed=2"]),
        ("tiny, CE only, seed 2", ["student=tiny", "loss=ce", "seed=2"]),
        ("distil, DistilBERT recipe", ["experiment=distilbert_sst2"]),
    ],
    "quant": [
        ("tiny fp32 + PTQ int8", ["student=tiny", "quant=ptq_int8"]),
        ("tiny QAT int8", ["student=tiny", "quant=qat_int8"]),
        ("micro fp32 + PTQ int8", ["student=micro", "quant=ptq_int8"]),
        ("micro QAT int8", ["student=micro", "quant=qat_int8"]),
    ],
    "glue": [
        ("distil, DistilBERT recipe", ["experiment=distilbert_sst2"]),
        ("tiny, TinyBERT two-stage", ["experiment=tinybert_sst2", "phases.general.data.max_samples=20000"]),
        ("tiny, TinyBERT two-stage + augmentation", ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=20000"]),
        # the learning-rate probe on SST-2 (docs/benchmarks/lr_probe_tiny.md) found 3e-4 better than the default for tiny
        ("tiny, soft KL + CE, lr 3e-4", ["student=tiny", "loss=kd", "optimizer.lr=3e-4"]),
        # regression (STS-B): MSE to the teacher's score + MSE to the label, longer at the higher lr
        ("tiny, logit MSE + MSE, lr 3e-4, 10 epochs", ["student=tiny", "loss=kd_mse", "optimizer.lr=3e-4",
                                                       "trainer.max_epochs=10"]),
        ("distil, DistilBERT recipe + QAT int8", ["experiment=distilbert_sst2", "quant=qat_int8"]),
        ("tiny, TinyBERT two-stage + QAT int8", ["experiment=tinybert_sst2", "phases.general.data.max_samples=20000", "quant=qat_int8"]),
        # the general student distilled once on all GLUE sentences at 1e-4, the task phases at 3e-4
        ("tiny, TinyBERT two-stage, general on all GLUE sentences, task lr 3e-4",
         ["experiment=tinybert_sst2", "phases.general.data.max_samples=null", "+phases.general.optimizer.lr=1e-4", "optimizer.lr=3e-4"]),
        # TinyBERT's answer to small task sets: augmentation on top, from the same general student
        ("tiny, TinyBERT two-stage + augmentation, general on all GLUE sentences",
         ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=null", "+phases.general.optimizer.lr=1e-4"]),
        ("tiny, TinyBERT two-stage + augmentation, general on all GLUE sentences, task lr 3e-4",
         ["experiment=tinybert_aug_sst2", "phases.general.data.max_samples=null", "+phases.general.optimizer.lr=1e-4", "optimizer.lr=3e-4"]),
    ],
}


def run_one(label: str, overrides: list[str], log_dir: Path, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "train.py", *overrides, f"paths.log_dir={log_dir}"]
    started, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    entry = {"label": label, "command": "python train.py " + " ".join(overrides), "wall_s": round(wall, 1),
             "returncode": proc.returncode, "placement": placement()}
    if proc.returncode != 0:
        entry["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return entry
    # only a report this command wrote: a stopped run (Lightning exits 0 on SIGTERM) must not borrow an older one
    reports = sorted((p for p in log_dir.glob("**/report.json") if p.stat().st_mtime >= started),
                     key=lambda p: p.stat().st_mtime)
    if not reports:
        entry.update(returncode=entry["returncode"] or 1, error="the run wrote no report.json (stopped early?)")
        return entry
    run_dir = reports[-1].parent
    entry["run_dir"] = str(run_dir)
    entry["report"] = json.loads(reports[-1].read_text())  # every model's row, int8 and ONNX variants included
    return entry


def rows_of(entry: dict) -> list[dict]:
    """The model rows of a record: report.json's; older quantized records kept all of them (teacher,
    student_fp32, int8, ONNX) in a separate ``compression`` report, which then is the fuller one."""
    source = entry.get("compression") or entry.get("report") or {}
    return source.get("models") or source.get("rows") or []


def to_markdown(suite: str, entries: list[dict], extra: list[str], note: str = "") -> str:
    # where each run ran, as it recorded it (a --render elsewhere must not restate it); older records: here
    where = "; ".join(dict.fromkeys(e.get("placement") or placement() for e in entries)) or placement()
    lines = [f"# Suite `{suite}`", "", f"- date: {date.today()}",
             f"- hardware: {cpu_name()}, {os.cpu_count()} cores, no GPU; this suite ran on {where}",
             f"- command: `python scripts/run_suite.py {suite} {' '.join('--extra ' + e for e in extra)}`".rstrip(),
             "- every run shares the teacher fine-tuned on the same task with the same settings",
             *([f"- note: {note}"] if note else []), "",
             "| configuration | model | metric | score | retention | params | size MB | ms/ex b1 | ex/s b32 | run time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    fmt = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    for e in entries:
        if e["returncode"] != 0:
            lines.append(f"| {e['label']} | failed: {e.get('error', '')} | | | | | | | | {e['wall_s'] / 60:.1f} min |")
            continue
        for r in rows_of(e):
            lines.append(
                f"| {e['label']} | {r.get('model')} | {r.get('metric', '')} | {fmt(r.get('score'), '{:.4f}')} | "
                f"{fmt(r.get('retention'), '{:.1%}')} | {fmt(r.get('parameters'), '{:,}')} | {fmt(r.get('size_mb'), '{:.1f}')} | "
                f"{fmt(r.get('latency_ms'), '{:.1f}')} | {fmt(r.get('throughput_eps'), '{:.1f}')} | {e['wall_s'] / 60:.1f} min |")
    lines += ["", "Commands (each also gets `paths.log_dir=<tmp>`):", ""]
    lines += [f"- {e['label']}: `{e['command']}`" for e in entries]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--extra", action="append", default=[], help="an override added to every run")
    parser.add_argument("--tasks", default="sst2", help="comma-separated GLUE tasks (data=...)")
    parser.add_argument("--out", default=None, help="output stem (default docs/benchmarks/<suite>)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the entries already in <out>.json, replacing those with the same label")
    parser.add_argument("--note", default="", help="a line for the record's header (conditions of the runs)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite <out>.md from the existing <out>.json (no runs)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only this configuration (its whole label) or those whose label contains this text (repeatable)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    stem = Path(args.out) if args.out else ROOT / "docs" / "benchmarks" / args.suite
    log_root = ROOT / "outputs" / "suites" / stem.name
    if args.render:
        entries = json.loads(stem.with_suffix(".json").read_text())
        print(write_records(stem, args.suite, entries, args.extra, args.note))
        return
    kept = json.loads(stem.with_suffix(".json").read_text()) if args.merge and stem.with_suffix(".json").is_file() else []
    entries, md = [], ""
    labels = [label for label, _ in SUITES[args.suite]]
    for task in args.tasks.split(","):
        for label, overrides in SUITES[args.suite]:
            if args.only and not selected(label, args.only, labels):
                continue
            ov = [*overrides, f"data={task}", *args.extra] if task != "sst2" or args.suite == "glue" else [*overrides, *args.extra]
            name = f"{task}: {label}" if args.suite == "glue" else label
            print(f"running {name} ...", flush=True)
            entries.append(run_one(name, ov, log_root / f"{len(entries):02d}", env))
            print(f"  done in {entries[-1]['wall_s'] / 60:.1f} min (rc {entries[-1]['returncode']})", flush=True)
            fresh = {e["label"] for e in entries}
            merged = [e for e in kept if e["label"] not in fresh] + entries
            md = write_records(stem, args.suite, merged, args.extra, args.note)  # after every run: a stop loses nothing
    print(md)


def selected(label: str, only: list[str], labels: list[str]) -> bool:
    """``--only`` texts: a whole label picks that one configuration, other text every label containing it."""
    return any(label == text or (text not in labels and text in label) for text in only)


def write_records(stem: Path, suite: str, entries: list[dict], extra: list[str], note: str = "") -> str:
    stem.parent.mkdir(parents=True, exist_ok=True)
    md = to_markdown(suite, entries, extra, note)
    for suffix, text in ((".md", md), (".json", json.dumps(entries, indent=2, default=str))):
        tmp = stem.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(stem.with_suffix(suffix))
    return md


if __name__ == "__main__":
    main()
