"""Teacher-output cache under DDP, two real processes on CPU: rank 0 records the entry, rank 1 waits and reads it.

Both ways another rank can wait: a gloo process group (a barrier, as after a fit or a fine-tuned teacher) and no
process group yet (torchrun / SLURM start every rank at once; rank 1 watches for the entry's meta.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _worker(rank: int, world: int, glue_dir: str, teacher_path: str, out: str) -> None:
    import torch.distributed as dist
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from omegaconf import OmegaConf

    from distill import teacher_cache as tc
    from distill.blocks import build_objective
    from distill.data.glue import GLUEDataModule
    from distill.data.tasks import get_task
    from distill.models.student import bert_student
    from distill.models.teacher import load_classifier

    torch.set_num_threads(1)
    rank_zero_only.rank = rank  # what Lightning reads from RANK at import
    dm = GLUEDataModule("sst2", data_dir=glue_dir, tokenizer=teacher_path, batch_size=8, max_length=32,
                        max_train_samples=24)
    teacher = load_classifier(teacher_path, get_task("sst2"))
    torch.manual_seed(0)
    student = bert_student(teacher, num_hidden_layers=2, hidden_size=24, num_attention_heads=2, intermediate_size=48,
                           init_embeddings="random")
    loss = {"_target_": "distill.losses.DistillationObjective", "soft": {"_target_": "distill.losses.SoftTargetKL"},
            "terms": {"hidden": {"_target_": "distill.losses.HiddenStateMSE", "layer_map": "uniform"}}}
    objective = build_objective(OmegaConf.create(loss), student, teacher)
    objective.attach(student, teacher)
    teacher.eval()
    recorded, record = [], tc._record
    tc._record = lambda *a, **k: (recorded.append(rank), record(*a, **k))
    settings = OmegaConf.create({"cache": True, "cache_dtype": "float32", "cache_max_gb": 1.0})
    for mode in ("barrier", "watch"):  # with a gloo process group, then without one (each into its own cache folder)
        if mode == "barrier":
            dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
        recorded.clear()
        cache = tc.prepare_teacher_outputs(settings, Path(out) / mode, objective, student, teacher, dm)
        batch = dm.collate([dm.train_set()[i] for i in range(8)])
        logits = cache.replay(batch).logits.tolist()
        (Path(out) / f"{mode}{rank}.json").write_text(json.dumps({"folder": str(cache.folder), "recorded": bool(recorded),
                                                                  "logits": logits}))
        if mode == "barrier":
            dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_one_recording_by_rank_zero(glue_dir, tiny_teacher, tmp_path):
    mp.spawn(_worker, args=(2, str(glue_dir), str(tiny_teacher), str(tmp_path)), nprocs=2, join=True)
    for mode in ("barrier", "watch"):
        zero, one = (json.loads((tmp_path / f"{mode}{r}.json").read_text()) for r in (0, 1))
        assert zero["recorded"] and not one["recorded"], mode  # rank 0 recorded it, rank 1 only read it
        assert zero["folder"] == one["folder"] and zero["logits"] == one["logits"]
        entries = list((tmp_path / mode / "teacher_outputs").iterdir())
        assert [e.name for e in entries] == [Path(zero["folder"]).name]  # one entry, no temporary folder left
