"""Stages: what ``python train.py stage=<name>`` runs (``conf/stage/<name>.yaml`` names the function).

Each stage is ``run(cfg, output_dir) -> (metrics, objects)`` and composes building blocks
(:mod:`distill.blocks`), phases (:mod:`distill.phases`) and the report (:mod:`distill.report`).
"""
