"""Distillation throughput: a plain PyTorch KD loop against distill, with and without the teacher-output cache.

    python scripts/bench_throughput.py [--samples 2000] [--repeats 3] [--variants a,b,...] [--out NAME]

Every variant trains the same `tiny` student (random init) against the same teacher (the offline MiniLM-L6,
its classifier head as loaded: weights do not change the cost) on the same SST-2 subset, batch 32, max length
128, one epoch, seed 42; each runs in a process of its own and is timed over its training steps only (the first
5 batches are warm-up; validation, checkpoints and start-up are outside the clock):

* ``plain``          a KD loop written here with PyTorch + transformers (soft KL at T=2 + CE, AdamW, linear
                     warm-up/decay, gradient clipping: the work distill's default objective does), dynamic padding
* ``plain-pad128``   the same, every batch padded to 128
* ``distill``        ``python train.py`` with the same settings (its default callbacks and CSV logger on)
* ``distill-pad128`` / ``distill-grouped``   padding to 128 / length-grouped batches (``data/sampler=length_grouped``)
* ``cache`` / ``cache-grouped``   ``teacher.cache=true`` (outputs recorded once before the fit), dynamic / grouped
* ``ce`` / ``ce-grouped``   CE-only training of the same student (no teacher at all: the limit a cache approaches)
* ``distill-bf16`` / ``distill-compile``   ``trainer.precision=bf16-mixed`` / ``compile.enabled=true`` (inductor)

Variants run in turn, the order reversed every other repeat; the table gives each variant's median examples/s,
its spread, and the ratios the issue asks for. Writes ``docs/benchmarks/<NAME>.{md,json}`` (default
``throughput``). Pin it for stable figures: ``taskset -c 0 env OMP_NUM_THREADS=1 python scripts/...``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
sys.path.insert(0, str(ROOT))
from distill.report.hardware import cpu_name  # noqa: E402

DISTILL = {
    "distill": [], "distill-pad128": ["data.padding=max_length"], "distill-grouped": ["data/sampler=length_grouped"],
    "cache": ["teacher.cache=true"], "cache-grouped": ["teacher.cache=true", "data/sampler=length_grouped"],
    "ce": ["loss=ce"], "ce-grouped": ["loss=ce", "data/sampler=length_grouped"],
    "distill-bf16": ["trainer.precision=bf16-mixed"], "distill-compile": ["compile.enabled=true"],
}
PLAIN = {"plain": "longest", "plain-pad128": "max_length"}
VARIANTS = [*PLAIN, *DISTILL]
# (numerator, denominator, target, what the issue asks)
RATIOS = [
    ("distill", "plain", 0.95, "framework overhead: distill / plain loop"),
    ("cache", "ce", 0.95, "with the cache (logits only) / CE-only training"),
    ("cache-grouped", "plain", 1.5, "cache + length grouping / plain loop"),
    ("distill-grouped", "distill", 1.3, "length-grouped / random-order dynamic padding"),
    ("distill", "distill-pad128", None, "dynamic padding / padding to 128"),
    ("cache-grouped", "ce-grouped", None, "cache + grouping / CE-only + grouping"),
    ("distill-bf16", "distill", None, "bf16-mixed / fp32"),
    ("distill-compile", "distill", None, "torch.compile / eager"),
]
SEED, BATCH, MAX_LENGTH = 42, 32, 128


def data_dir() -> str:
    return os.environ.get("DISTILL_DATA_DIR", str(ROOT.parent / "shared" / "data" / "glue"))


def plain_loop(samples: int, padding: str, skip: int = 5) -> dict:
    """The baseline: what a user writes with PyTorch and transformers alone. Returns the clock's figures."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    from distill.data.glue import GLUEDataModule
    from distill.models.student import bert_student
    from distill.models.teacher import load_classifier
    from distill.resolvers import register

    register()
    from omegaconf import OmegaConf

    teacher_path = OmegaConf.create({"t": "${default_teacher:}"}).t
    dm = GLUEDataModule("sst2", data_dir=data_dir(), tokenizer=teacher_path, max_train_samples=samples,
                        batch_size=BATCH, max_length=MAX_LENGTH)
    dm.setup("fit")  # tokenization only (cached): the loop below uses a plain DataLoader over its rows
    torch.manual_seed(SEED)
    teacher = load_classifier(teacher_path, dm.spec).eval().requires_grad_(False)
    student = bert_student(teacher, 4, 312, 12, 1200, init_embeddings="random").train()
    collate = DataCollatorWithPadding(dm.tokenizer, padding=padding, max_length=MAX_LENGTH, return_tensors="pt")
    loader = DataLoader(dm.datasets["train"], batch_size=BATCH, shuffle=True, collate_fn=collate)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.01)
    total, warmup = len(loader), max(1, int(0.1 * len(loader)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    temperature, examples, tokens, steps, t0 = 2.0, 0, 0, 0, None
    for i, batch in enumerate(loader):
        if i == skip:
            t0 = time.perf_counter()
        labels = batch.pop("labels")
        with torch.no_grad():
            t_logits = teacher(**batch).logits
        s_logits = student(**batch).logits
        soft = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.log_softmax(t_logits / temperature, -1),
                        reduction="batchmean", log_target=True) * temperature**2
        loss = 0.5 * soft + 0.5 * F.cross_entropy(s_logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if t0 is not None:
            examples, tokens, steps = examples + len(labels), tokens + int(batch["attention_mask"].sum()), steps + 1
    return {"examples": examples, "tokens": tokens, "seconds": time.perf_counter() - t0, "steps": steps}


def run_variant(name: str, samples: int, work: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    clock = work / f"{name}-{time.time_ns()}.json"
    if name in PLAIN:
        cmd = [sys.executable, __file__, "--plain", PLAIN[name], "--samples", str(samples), "--clock", str(clock)]
    else:
        cmd = [sys.executable, "train.py", "student=tiny", "student.init_embeddings=random", "teacher.finetune=false",
               f"data.max_train_samples={samples}", f"data.batch_size={BATCH}", f"data.max_length={MAX_LENGTH}",
               "trainer.max_epochs=1", f"seed={SEED}", "ckpt_path=null", "measure_speed=false", "logger=csv",
               "data.max_eval_samples=128",  # validation and the report are outside the clock: keep them short
               f"paths.log_dir={work / 'logs'}", f"paths.cache_dir={work / 'cache'}",
               f"paths.data_dir={data_dir()}", "+callbacks.clock._target_=distill.loggers.TrainingClock",
               f"+callbacks.clock.path={clock}", *DISTILL[name]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(clock.read_text())
    recorded = re.search(r"teacher.cache: recorded in ([0-9.]+) s", proc.stderr + proc.stdout)
    if recorded:
        out["cache_record_s"] = float(recorded.group(1))
    out["examples_per_s"] = out["examples"] / out["seconds"]
    return out


def table(results: dict[str, list[dict]]) -> list[str]:
    lines = ["| variant | examples/s (median) | runs | real tokens/s (median) |", "|---|---|---|---|"]
    for name, runs in results.items():
        eps = [r["examples_per_s"] for r in runs]
        tps = statistics.median(r["tokens"] / r["seconds"] for r in runs)
        lines.append(f"| `{name}` | {statistics.median(eps):.1f} | {' / '.join(f'{e:.1f}' for e in eps)} | {tps:.0f} |")
    return lines


def ratio_rows(results: dict[str, list[dict]]) -> tuple[list[str], list[dict]]:
    lines = ["| ratio | median | per repeat | target | met |", "|---|---|---|---|---|"]
    rows = []
    for num, den, target, what in RATIOS:
        if num not in results or den not in results:
            continue
        per = [a["examples_per_s"] / b["examples_per_s"] for a, b in zip(results[num], results[den])]
        med = statistics.median(per)
        met = "" if target is None else ("yes" if med >= target else "no")
        lines.append(f"| {what} (`{num}` / `{den}`) | {med:.2f}× | {' / '.join(f'{p:.2f}' for p in per)} | "
                     f"{'—' if target is None else f'≥ {target}×'} | {met} |")
        rows.append({"ratio": f"{num}/{den}", "median": med, "per_repeat": per, "target": target})
    return lines, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="throughput")
    ap.add_argument("--plain", help=argparse.SUPPRESS)
    ap.add_argument("--clock", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:  # a child process: one plain-loop variant
        Path(args.clock).write_text(json.dumps(plain_loop(args.samples, args.plain)))
        return
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"--variants: {unknown} are not among {', '.join(VARIANTS)}")
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in names if rep % 2 == 0 else names[::-1]:
                r = run_variant(name, args.samples, Path(tmp))
                results[name].append(r)
                print(f"repeat {rep + 1} {name:16s} {r['examples_per_s']:7.1f} ex/s over {r['steps']} steps", flush=True)
    where = f"cores {','.join(map(str, sorted(os.sched_getaffinity(0))))}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}"
    ratios, ratio_data = ratio_rows(results)
    record = [r.get("cache_record_s") for r in results.get("cache", []) + results.get("cache-grouped", [])]
    record = [r for r in record if r is not None]
    md = [f"# Distillation throughput ({date.today().isoformat()})", "",
          f"`python scripts/bench_throughput.py --samples {args.samples} --repeats {args.repeats}` on {cpu_name()} "
          f"({where}); SST-2, {args.samples} examples, batch {BATCH}, max length {MAX_LENGTH}, `tiny` student from a "
          "random init, MiniLM-L6 teacher, one epoch per run, each variant in its own process, timed over its "
          "training steps only (first 5 batches skipped), variants alternated.", "", *table(results), "",
          *ratios, ""]
    if record:
        md += [f"The cache is recorded once before the first fit (one teacher pass over the training set, no "
               f"gradients): {statistics.median(record):.1f} s here; every later epoch and run reuses it.", ""]
    print("\n".join(md))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.md").write_text("\n".join(md))
    (OUT / f"{args.out}.json").write_text(json.dumps({"date": date.today().isoformat(), "cpu": cpu_name(),
                                                      "placement": where, "samples": args.samples,
                                                      "results": results, "ratios": ratio_data}, indent=2))


if __name__ == "__main__":
    main()
