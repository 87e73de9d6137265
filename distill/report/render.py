"""The report as text: an aligned console table and a markdown page with the same columns; atomic writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.checkpoint import replace_atomically
from distill.report.chart import SPARSE
from distill.report.vocab import vocab_trim_line


def columns(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(row key, header, format)`` of every column, shared by the console and markdown tables."""
    rows = report.get("models") or []
    metric = next((r["metric"] for r in rows if r.get("metric")), "score")
    batch = (report.get("settings") or {}).get("throughput_batch", "?")
    return [
        ("model", "model", "{}"), ("format", "format", "{}"), ("precision", "precision", "{}"),
        ("runtime", "runtime", "{}"), ("score", metric, "{:.4f}"), ("retention", "retention", "{:.1%}"),
        ("geometry", "geometry", "{}"), ("parameters", "params", "{:,}"),
        ("parameters_embeddings", "emb params", "{:,}"), ("sparsity", "sparsity", "{:.1%}"),
        ("size_mb", "size MB", "{:.2f}"), ("compression_size", "size ÷", "{:.1f}x"),
        ("latency_ms", "ms p50", "{:.2f}"), ("latency_p90_ms", "ms p90", "{:.2f}"),
        ("throughput_eps", f"ex/s @b{batch}", "{:.1f}"), ("speedup_latency", "speed-up", "{:.1f}x"),
        ("agreement", "agreement", "{:.2%}"),
        *[(key, header, "{:.1f}") for key, header in (("load_ms", "load ms"), ("peak_memory_mb", "peak MiB"))
          if any(r.get(key) is not None for r in rows)],  # edge exports measure these; other reports omit them
    ]


def _value(row: dict[str, Any], key: str) -> Any:
    if key == "agreement":
        return (row.get("parity") or {}).get("agreement")
    return row.get(key)


def _cells(report: dict[str, Any], empty: str) -> tuple[list[str], list[list[str]]]:
    cols = columns(report)
    body = [[empty if _value(row, key) is None else spec.format(_value(row, key)) for key, _, spec in cols]
            for row in report.get("models") or []]
    return [header for _, header, _ in cols], body


def format_table(report: dict[str, Any]) -> str:
    """The report's rows as an aligned plain-text table (what a run prints)."""
    header, body = _cells(report, "-")
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def _settings_line(report: dict[str, Any]) -> str:
    s, hw = report.get("settings") or {}, report.get("hardware") or {}
    where = (f"{hw.get('cpu', '?')}, {hw.get('cores', '?')} cores ({hw.get('usable_cores', '?')} usable), "
             f"{hw.get('torch_threads', '?')} torch threads, torch {hw.get('torch', '?')}"
             + (f", onnxruntime {hw['onnxruntime']}" if hw.get("onnxruntime") else "")
             + (f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU"))
    if s.get("measure_speed", True):
        speed = (f"latency is the median (p50) and 90th percentile of {s.get('latency_runs', '?')} runs after "
                 f"warm-up at batch 1 and sequence length {s.get('seq_len', '?')}; throughput at batch "
                 f"{s.get('throughput_batch', '?')}, median of {s.get('throughput_runs', '?')} runs")
    else:
        speed = "speed not measured"
    ref = s.get("reference", "teacher")
    return (f"Hardware: {where}. Measured on CPU: {speed}. Ratios (÷, speed-up) are {ref} ÷ model; retention "
            f"is model ÷ {ref} score; agreement is the share of predictions identical to "
            f"`{s.get('parity_reference', 'student')}`'s.")


def _parity_line(report: dict[str, Any]) -> str | None:
    parts = []
    for row in report.get("models") or []:
        p = row.get("parity")
        if not p or row["model"] == p.get("reference"):
            continue
        agreement = "–" if p.get("agreement") is None else f"{p['agreement']:.2%}"
        parts.append(f"{row['model']}: max |Δlogit| {p['max_abs_logit_diff']:.2e}, agreement {agreement}")
    if not parts:
        return None
    ref = (report.get("settings") or {}).get("parity_reference", "student")
    return f"Parity vs `{ref}` over the whole evaluated split: " + "; ".join(parts) + "."


def sparsity_note(report: dict[str, Any]) -> str | None:
    """One paragraph for reports with sparse rows: what the column measures, what the zeros cost and save
    (the size of each compressed export beside its dense size), and that latency is measured on dense kernels."""
    rows = report.get("models") or []
    sparse = [r for r in rows if (r.get("sparsity") or 0.0) >= SPARSE]
    if not sparse:
        return None
    levels = ", ".join(f"{r['model']} {r['sparsity']:.1%}" for r in sparse)
    outside = [f"`{r['model']}`" for r in sparse if r.get("runtime") not in (None, "torch")]
    if outside:
        levels += f" ({', '.join(outside)}: counted on the PyTorch weights it was exported from)"
    exports = [f"`{r['model']}` {r['size_mb']:.2f} MB vs {r['notes']['dense_size_mb']:.2f} MB dense"
               for r in rows if (r.get("notes") or {}).get("dense_size_mb") is not None and r.get("size_mb")]
    stored = (f" Compressed export (the zeros left out, {rows_layout(rows)}): " + "; ".join(exports) + "."
              if exports else " No compressed export was written: each size is that of the dense file.")
    return (f"Sparsity is the share of exact zeros in the weights of the linear layers (task head and pooler "
            f"excluded), measured on each model: {levels}.{stored} Zeros do not speed up dense CPU kernels: "
            "every latency here is measured as the model runs, on dense kernels, so a sparse model runs at the "
            "speed of a dense model of its shape.")


def rows_layout(rows: list[dict[str, Any]]) -> str:
    """The storage layout the compressed exports name in their notes (``bitmask + non-zero values`` ...)."""
    layouts = sorted({str(r["notes"]["layout"]) for r in rows if (r.get("notes") or {}).get("layout")})
    return ", ".join(layouts) or "sparse layout"


def report_notes(report: dict[str, Any]) -> list[str]:
    """The paragraphs printed and written under the table (parity, sparsity, trimmed vocabulary), those that apply."""
    return [line for line in (_parity_line(report), sparsity_note(report), vocab_trim_line(report)) if line]


def to_markdown(report: dict[str, Any]) -> str:
    """A markdown page: the task and split, settings and hardware, the table, then the parity line."""
    header, body = _cells(report, "–")
    split = report.get("split", "dev")
    examples = f", {report['eval_examples']} examples" if report.get("eval_examples") else ""
    lines = [f"# Report: {report.get('task', '?')} ({split}{examples})", "", _settings_line(report), "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
             *("| " + " | ".join(cells) + " |" for cells in body)]
    for paragraph in report_notes(report):
        lines += ["", paragraph]
    return "\n".join(lines) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, atomically (values JSON does not know become strings)."""
    return replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def write_text(path: str | Path, text: str) -> Path:
    """``text`` at ``path``, atomically."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text))
