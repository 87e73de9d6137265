"""The report's line on a trimmed vocabulary (``student.trim_vocab``): a row's ``notes.vocab_trim``, in words."""

from __future__ import annotations

from typing import Any


def vocab_trim_line(report: dict[str, Any]) -> str | None:
    """How much of the evaluated split the trimmed vocabulary maps to ``[UNK]``; None when no row is trimmed."""
    parts = []
    for row in report.get("models") or []:
        t = (row.get("notes") or {}).get("vocab_trim")
        if not t:
            continue
        parts.append(
            f"`{row['model']}` reads the teacher's vocabulary trimmed to the task's training set "
            f"({t['vocab_size']:,} of {t['teacher_vocab_size']:,} word pieces): {t['oov_examples']:,} of "
            f"{t['examples']:,} {t['split']} examples use a dropped piece ({t['oov_tokens']:,} of {t['tokens']:,} "
            f"word pieces); re-split into kept pieces, {t['unk_examples_after']:,} examples "
            f"({t['unk_tokens_after']:,} word pieces) still hold a piece mapped to [UNK] (the teacher's own "
            f"tokenizer gives {t.get('unk_tokens_before', 0):,} [UNK] pieces).")
    return " ".join(parts) or None
