"""Teacher-output cache for masked-LM distillation: cache size (dense vs top-k) and training examples/s.

Runs DistilBERT's general phase (``experiment=mlm_distill stage=general``, student ``distil``) with static
masking on a few hundred GLUE sentences, once per variant and repeat, each in its own process, with the steps
timed by ``distill.loggers.TrainingClock`` (5 warm-up batches; recording the cache happens before the fit and is
reported apart): ``live`` (the teacher runs on every batch), ``cache_top32`` (its logits at the masked positions,
top 32 + log-sum-exp, bucket tail) and ``cache_dense`` (every vocabulary logit at those positions). Prints a
markdown table; the teacher must be a ``BertForMaskedLM`` (``--teacher``).

    nice -n 10 python scripts/bench_mlm_cache.py --teacher /tmp/minilm_mlm --samples 400 --repeats 2
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "live": [],
    "cache_top32": ["teacher.cache=true", "teacher.cache_top_k=32"],
    "cache_dense": ["teacher.cache=true", "teacher.cache_top_k=null", "teacher.cache_max_gb=8"],
}


def run_variant(name: str, args, work: Path) -> dict:
    clock = work / f"{name}-{time.time_ns()}.json"
    cmd = [sys.executable, "train.py", "experiment=mlm_distill", "stage=general", f"teacher.name_or_path={args.teacher}",
           f"phases.general.data.max_samples={args.samples}", "phases.general.data.static_masking=true",
           "phases.general.cache=false", f"phases.general.max_epochs={args.epochs}", "seed=42", "logger=none",
           "ckpt_path=null", f"paths.log_dir={work / 'logs'}", f"paths.cache_dir={work / 'cache'}",
           "+callbacks.clock._target_=distill.loggers.TrainingClock", f"+callbacks.clock.path={clock}", *VARIANTS[name]]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(clock.read_text())
    out["examples_per_s"] = out["examples"] / out["seconds"]
    logs = proc.stderr + proc.stdout
    for key, pattern in (("record_s", r"teacher.cache: recorded in ([0-9.]+) s"),
                         ("stated", r"teacher.cache: recording (.*?) at /"), ("entry", r"teacher.cache: \w+ .*? at (/\S+)"),
                         ("reused", r"teacher.cache: reusing (/\S+)")):
        found = re.search(pattern, logs)
        if found:
            out[key] = float(found.group(1)) if key == "record_s" else found.group(1)
    folder = out.get("entry") or out.get("reused")
    if folder:
        folder = Path(folder)
        files = {p.name: p.stat().st_size for p in folder.glob("*.npy")}
        out["entry_bytes"] = sum(files.values())
        out["logit_bytes"] = sum(v for k, v in files.items() if k.startswith("positions_") and k != "positions_offsets.npy")
        out["meta"] = json.loads((folder / "meta.json").read_text())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True, help="a BertForMaskedLM folder")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--out", help="also write the raw figures as JSON here")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in args.variants.split(",")}
    with tempfile.TemporaryDirectory(prefix="bench_mlm_cache-") as tmp:
        for repeat in range(args.repeats):  # variants interleaved, so slow phases of a shared machine hit all alike
            for name in results:
                start = time.perf_counter()
                results[name].append(run_variant(name, args, Path(tmp)))
                print(f"repeat {repeat}: {name} {results[name][-1]['examples_per_s']:.1f} ex/s "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    lines = ["| variant | examples/s (median) | per run | cache entry | logits in it | recorded in |", "|---|---|---|---|---|---|"]
    for name, runs in results.items():
        eps = [r["examples_per_s"] for r in runs]
        first = runs[0]
        entry = f"{first['entry_bytes'] / 2**20:.1f} MiB" if "entry_bytes" in first else "—"
        logits = f"{first['logit_bytes'] / 2**20:.2f} MiB" if "logit_bytes" in first else "—"
        record = f"{first['record_s']:.1f} s" if "record_s" in first else "—"
        lines.append(f"| `{name}` | {statistics.median(eps):.1f} | {' / '.join(f'{e:.1f}' for e in eps)} | {entry} | "
                     f"{logits} | {record} |")
    print("\n".join(lines))
    for name, runs in results.items():
        if "stated" in runs[0]:
            print(f"{name}: stated before recording: {runs[0]['stated']}")


if __name__ == "__main__":
    main()
