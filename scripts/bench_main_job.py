"""Time the README's main job twice (cold teacher cache, then warm) and check the shipped student.

    python scripts/bench_main_job.py [extra train.py overrides...]

Run 1 uses an empty cache folder, so it fine-tunes the teacher; run 2 must reuse it. Afterwards the
student folder is loaded with ``transformers.pipeline("text-classification")`` and scored on the dev
set; that score must equal the one in report.json. Writes docs/benchmarks/main_job.{md,json}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
sys.path.insert(0, str(ROOT))  # the checkout's distill, installed or not
from distill.report.hardware import cpu_name  # noqa: E402  (run_suite and make_results import it from here)


def placement() -> str:
    """Which cores this process may use and its torch thread setting (timings depend on both)."""
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return f"cores {cores} with torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}"


def run_job(args: list[str], env: dict[str, str], log_dir: Path) -> tuple[float, Path, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", "student=tiny", f"paths.log_dir={log_dir}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    reports = sorted(log_dir.glob("**/report.json"), key=lambda p: p.stat().st_mtime)
    return wall, reports[-1].parent, proc.stdout + proc.stderr


def pipeline_score(run_dir: Path) -> float:
    from transformers import pipeline

    from distill.data.tasks import get_task
    from distill.data.tsv import read_glue_tsv, task_file

    data_dir = os.environ.get("DISTILL_DATA_DIR", ROOT.parent / "shared" / "data" / "glue")
    spec = get_task("sst2")
    dev = read_glue_tsv(task_file(data_dir, spec, "dev"), spec)
    clf = pipeline("text-classification", model=str(run_dir / "student"), device=-1)
    preds = clf(dev["text_a"], batch_size=64)
    labels = {name: i for i, name in clf.model.config.id2label.items()}
    hits = sum(labels[p["label"]] == y for p, y in zip(preds, dev["label"]))
    return hits / len(dev["label"])


def main() -> None:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:  # kept on failure by re-running the steps
        env = {**os.environ, "DISTILL_CACHE_DIR": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
        cold, run1, log1 = run_job(extra, env, Path(tmp) / "logs1")
        warm, run2, log2 = run_job(extra, env, Path(tmp) / "logs2")
        reused = "Reusing the fine-tuned teacher" in log2
        report = json.loads((run2 / "report.json").read_text())
        rows = {r["model"]: r for r in report["models"]}
        try:
            shipped = pipeline_score(run2)
        except Exception as err:  # keep the timings even if the check cannot run
            print(f"pipeline check failed: {err!r}", file=sys.stderr)
            shipped = float("nan")
    result = {
        "date": str(date.today()),
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, no GPU; ran on {placement()}",
        "command": "python train.py student=tiny " + " ".join(extra), "cold_run_s": round(cold, 1),
        "warm_run_s": round(warm, 1), "teacher_reused": reused, "pipeline_dev_accuracy": shipped,
        "report": rows,
    }
    t, s = rows["teacher"], rows["student"]
    md = [
        "# Main job: `python train.py student=tiny`", "",
        f"- date: {result['date']}", f"- hardware: {result['hardware']}",
        f"- command: `{result['command'].strip()}` (measured by `python scripts/bench_main_job.py`)",
        f"- data: SST-2, {report['train_examples']} training examples (seeded subset), dev {report['eval_examples']}",
        "", "| | value |", "| --- | --- |",
        f"| first run (teacher fine-tuning included) | {cold / 60:.1f} min |",
        f"| second run (cached teacher reused: {reused}) | {warm / 60:.1f} min |",
        f"| teacher dev accuracy | {t['score']:.4f} |",
        f"| student dev accuracy (report) | {s['score']:.4f} |",
        f"| student dev accuracy via `transformers.pipeline` on `student/` | {shipped:.4f} |",
        f"| retention | {s['retention']:.1%} |",
        f"| parameters teacher / student | {t['parameters']:,} / {s['parameters']:,} |",
        f"| size on disk teacher / student | {t['size_mb']:.1f} MB / {s['size_mb']:.1f} MB |",
        f"| latency b1 s128 teacher / student | {t.get('latency_ms', float('nan')):.1f} ms / {s.get('latency_ms', float('nan')):.1f} ms |",
        f"| throughput b32 s128 teacher / student | {t.get('throughput_eps', float('nan')):.1f} / {s.get('throughput_eps', float('nan')):.1f} ex/s |",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "main_job.json").write_text(json.dumps(result, indent=2, default=str))
    (OUT / "main_job.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
