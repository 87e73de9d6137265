"""Shared fixtures: tiny GLUE files, a tiny BERT teacher with its own tokenizer, and composed configs.

Nothing here touches the network: the tokenizer vocabulary, the models and the TSVs are made here.
"""

from __future__ import annotations

import os

# Triton's interpreter must be chosen before triton is imported (lightning imports it when present).
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")  # the offline path has its own tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from distill.resolvers import register  # noqa: E402

register()

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_GLUE = Path(os.environ.get("DISTILL_DATA_DIR", ROOT.parent / "shared" / "data" / "glue"))

WORDS = ("the a movie film good bad great awful fun boring plot actor story is was not very really love hate "
         "man woman dog cat plays runs eats says said company shares rose fell percent market year").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_glue_fixture(root: Path, rows: int = 40, seed: int = 0) -> Path:
    """Tiny GLUE folders in the original TSV layouts (headers, CoLA headerless, MRPC BOM, RTE words)."""
    rng = random.Random(seed)
    layouts = {
        "SST-2": ("sentence\tlabel", lambda i: f"{_sentence(rng)}\t{i % 2}"),
        "CoLA": (None, lambda i: f"src\t{i % 2}\t\t{_sentence(rng)}"),
        "MRPC": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                 lambda i: f"{i % 2}\t{i}\t{i + 1}\t{_sentence(rng)}\t{_sentence(rng)}"),
        "RTE": ("index\tsentence1\tsentence2\tlabel",
                lambda i: f"{i}\t{_sentence(rng)}\t{_sentence(rng)}\t{('entailment', 'not_entailment')[i % 2]}"),
        "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                  lambda i: f"{i}\tg\tf\ty\t{i}\ts\ts\t{_sentence(rng)}\t{_sentence(rng)}\t{(i % 6) * 0.8:.3f}"),
    }
    for folder, (header, row) in layouts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", rows), ("dev", rows // 2)):
            lines = ([header] if header else []) + [row(i) for i in range(n)]
            (root / folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def make_tokenizer(path: Path):
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tokens = SPECIALS + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz")
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


def make_tiny_bert(path: Path, num_labels: int = 2, layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0):
    """Save a tiny random ``BertForSequenceClassification`` with the fixture tokenizer at ``path``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = make_tokenizer(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64,
                        num_labels=num_labels)
    model = BertForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue_fixture(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher")
    make_tiny_bert(path, layers=4, hidden=32, heads=2)
    return path


def compose_cfg(overrides: list[str], output_dir: Path, job_name: str = "test"):
    """Compose conf/train.yaml as ``python train.py <overrides>`` would, with Hydra's runtime set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.name = job_name
    HydraConfig.instance().set_config(cfg)
    return cfg


def fast_overrides(glue_dir: Path, teacher: Path, cache: Path) -> list[str]:
    """A few dozen examples, a tiny teacher, no speed measurement, CSV logs: a seconds-long run."""
    return [
        f"paths.data_dir={glue_dir}", f"paths.cache_dir={cache}", f"teacher.name_or_path={teacher}",
        "teacher.finetune=false", "student=micro", "data.max_train_samples=32", "data.batch_size=8",
        "trainer.max_epochs=1", "measure_speed=false",
    ]


@pytest.fixture
def make_cfg(glue_dir, tiny_teacher, tmp_path):
    """Factory: composed config for a fast run in ``tmp_path`` plus extra overrides."""

    def factory(*extra: str, output: str = "run"):
        return compose_cfg([*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), *extra], tmp_path / output)

    yield factory
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path = ROOT, timeout: float = 600, env_extra: dict | None = None):
    """Run ``python train.py <args>`` offline in a subprocess; returns the CompletedProcess (text output)."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_sweep(glue_dir, tiny_teacher, tmp_path_factory) -> Path:
    """A two-job grid multirun (``loss.temperature=1,4``) of the fast setup, made once through the CLI."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "multirun"
    proc = run_cli(["-m", *fast_overrides(glue_dir, tiny_teacher, root / "cache"), f"hydra.sweep.dir={sweep}",
                    "logger=csv", "measure_speed=false", "loss.temperature=1,4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def make_tiny_mlm(path: Path, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0):
    """Save a tiny random ``BertForMaskedLM`` (a masked-LM teacher) with the fixture tokenizer at ``path``."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = make_tokenizer(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64)
    model = BertForMaskedLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_mlm_teacher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlm_teacher")
    make_tiny_mlm(path)
    return path


@pytest.fixture
def single_thread():
    """One intra-op thread for the test: tiny models gain nothing from more, and lose much when cores are busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
