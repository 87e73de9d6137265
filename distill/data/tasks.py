"""GLUE task specifications: file layouts, label sets and metrics, as data (no if-chains on names)."""

from __future__ import annotations

from dataclasses import dataclass, field

# the tokenizer outputs a BERT-family model takes (each present or not): every batch, export and report reads these
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is laid out on disk and on the hub, and how it is scored.

    ``text_columns`` name the columns holding sentence 1 (and 2 for pair tasks) in the header of the
    GLUE TSV; headerless files (CoLA) give column indices in ``positional`` instead. ``label_names``
    maps raw label strings to class ids; ``None`` means regression (a float score).
    """

    name: str
    folder: str
    hub_config: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    has_header: bool = True
    positional: dict[str, int] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        name="sst2", folder="SST-2", hub_config="sst2", text_columns=("sentence",), label_column="label",
        label_names=("0", "1"), metrics=("accuracy",), main_metric="accuracy",
    ),
    "cola": TaskSpec(
        name="cola", folder="CoLA", hub_config="cola", text_columns=("sentence",), label_column="label",
        label_names=("0", "1"), metrics=("matthews", "accuracy"), main_metric="matthews", has_header=False,
        positional={"sentence": 3, "label": 1},
    ),
    "mrpc": TaskSpec(
        name="mrpc", folder="MRPC", hub_config="mrpc", text_columns=("#1 String", "#2 String"),
        label_column="Quality", label_names=("0", "1"), metrics=("f1", "accuracy"), main_metric="f1",
    ),
    "rte": TaskSpec(
        name="rte", folder="RTE", hub_config="rte", text_columns=("sentence1", "sentence2"), label_column="label",
        label_names=("entailment", "not_entailment"), metrics=("accuracy",), main_metric="accuracy",
    ),
    "stsb": TaskSpec(
        name="stsb", folder="STS-B", hub_config="stsb", text_columns=("sentence1", "sentence2"),
        label_column="score", label_names=None, metrics=("pearson", "spearman"), main_metric="pearson",
    ),
}

# Hub column names of nyu-mll/glue per task (the hub renames the TSV columns).
HUB_TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "sst2": ("sentence",), "cola": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "rte": ("sentence1", "sentence2"), "stsb": ("sentence1", "sentence2"),
}


def get_task(name: str) -> TaskSpec:
    """Return the spec of a GLUE task, or raise a one-sentence ``ValueError`` naming the allowed tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"data.task={name!r} is not a known GLUE task; allowed: {', '.join(TASKS)}.") from None
