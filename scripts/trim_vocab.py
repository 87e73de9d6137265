#!/usr/bin/env python
"""Trim a trained student's vocabulary to its task's training set: ``python scripts/trim_vocab.py <run or student dir>``.

Keeps the word pieces the training texts use (tokenized with the student's own, i.e. the teacher's, tokenizer)
plus the special tokens, shrinks the embedding and saves the model with a matching WordPiece tokenizer in
``<dir>/export/trim/`` (or ``--out``). Then reloads it with vanilla transformers, evaluates both on the dev
set (each with its own tokenizer) and writes ``trim.json`` beside it: size on disk, dev metrics before / after,
and how much of the dev set uses pieces outside the kept vocabulary. Mistakes exit 2 with one sentence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.errors import DistillError  # noqa: E402  (light import: no torch)


def _texts(split: dict[str, list]) -> list:
    return list(zip(split["text_a"], split["text_b"], strict=True)) if "text_b" in split else list(split["text_a"])


def trim_run(path: Path, out: Path | None, task: str | None, data_dir: str | None) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.data.glue import GLUEDataModule
    from distill.data.tsv import read_glue_tsv, task_file
    from distill.export.run_report import dev_datamodule
    from distill.models.student import count_parameters
    from distill.models.trim import oov_stats, trim_vocabulary
    from distill.report.evaluate import evaluate_classifier
    from distill.report.timing import size_on_disk_mb

    student_dir = path / "student" if (path / "student").is_dir() else path
    out = out or student_dir.parent / "export" / "trim"
    dm = dev_datamodule(student_dir.parent, student_dir, task, data_dir)
    spec, data_dir = dm.spec, dm.data_dir
    train = _texts(read_glue_tsv(task_file(data_dir, spec, "train"), spec))
    dev = read_glue_tsv(task_file(data_dir, spec, "dev"), spec)

    def evaluate(model_dir: Path) -> tuple[dict, int]:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        data = GLUEDataModule(spec.name, data_dir=data_dir, source="local", tokenizer=str(model_dir),
                              max_length=dm.max_length, eval_batch_size=dm.eval_batch_size)
        data.setup("validate")
        return evaluate_classifier(model, data.val_dataloader(), spec), count_parameters(model)

    before, params_before = evaluate(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    model, new_tokenizer, info = trim_vocabulary(model, tokenizer, train)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    new_tokenizer.save_pretrained(out)
    after, params_after = evaluate(out)  # vanilla Auto* classes, the trimmed tokenizer

    # in-vocabulary text (here: the whole training set) must tokenize to the same pieces, ids remapped
    reloaded = AutoTokenizer.from_pretrained(out)
    remap = {old: new for new, old in enumerate(info.kept_ids)}
    plain = [t if isinstance(t, str) else " ".join(t) for t in train]
    same = sum([remap[i] for i in a] == b for a, b in zip(tokenizer(plain)["input_ids"], reloaded(plain)["input_ids"],
                                                          strict=True))
    dev_texts = [" ".join(t) if isinstance(t, tuple) else t for t in _texts(dev)]
    main = spec.main_metric
    return {
        "student": str(student_dir), "trimmed": str(out), "task": spec.name,
        **info.to_dict(),
        "train_examples_tokenized_identically": same,
        "size_mb_before": round(size_on_disk_mb(student_dir), 2), "size_mb_after": round(size_on_disk_mb(out), 2),
        "parameters_before": params_before, "parameters_after": params_after,
        f"dev_{main}_before": before[main], f"dev_{main}_after": after[main],
        "dev_metrics_before": before, "dev_metrics_after": after,
        "dev_oov": oov_stats(tokenizer, info.kept_ids, dev_texts, reloaded),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a run folder (with student/) or a saved student folder")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/export/trim)")
    parser.add_argument("--task", default=None, help="GLUE task of a bare student folder (a run's config says it)")
    parser.add_argument("--data-dir", default=None, help="GLUE folder (default: $DISTILL_DATA_DIR or ../shared/data/glue)")
    args = parser.parse_args(argv)
    try:
        if not Path(args.dir).is_dir():
            raise DistillError(f"{args.dir} is not a directory; give a run folder (with student/) or a saved "
                               "student folder.")
        result = trim_run(Path(args.dir), Path(args.out) if args.out else None, args.task, args.data_dir)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (Path(result["trimmed"]) / "trim.json").write_text(json.dumps(result, indent=2) + "\n")
    main_metric = next(k for k in result if k.endswith("_before") and k.startswith("dev_") and k != "dev_metrics_before")
    name = main_metric.removeprefix("dev_").removesuffix("_before")
    oov = result["dev_oov"]
    print(f"vocabulary {result['old_vocab_size']} -> {result['new_vocab_size']} pieces; "
          f"size {result['size_mb_before']} -> {result['size_mb_after']} MB "
          f"({1 - result['size_mb_after'] / result['size_mb_before']:.1%} smaller); "
          f"dev {name} {result[f'dev_{name}_before']:.4f} -> {result[f'dev_{name}_after']:.4f}; "
          f"dev examples with a dropped piece {oov['oov_examples']}/{oov['examples']} "
          f"({oov['oov_tokens']}/{oov['tokens']} tokens)")
    print(f"trimmed: {result['trimmed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
