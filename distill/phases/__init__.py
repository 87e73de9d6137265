"""A recipe is an ordered sequence of named phases; every phase is fitted by the one function :func:`fit_phase`.

A run config without ``phases`` is one implicit phase written straight into the run folder (its
``checkpoints/``, logs, resume by ``ckpt_path``), exactly the single fit it always was. With a mapping::

    phases:
      general:      {order: 0, models: {...}, data: {...}, cache: true, max_epochs: 1}   # conf/phase/general.yaml
      intermediate: {order: 1, max_epochs: 2}      # loss composed by `- /loss@phases.intermediate.loss: ...`
      prediction:   {order: 2, max_epochs: 3, loss: ${loss}}

phases run by ``order`` (ties by name), each in ``<run>/phases/<position>-<name>/`` with its own
checkpoints and logs, and each phase's effective run config comes from :func:`phase_config` (the run
config is never changed). Any key can be changed from the command line: ``phases.prediction.max_epochs=5``,
``phases.prediction.loss.temperature=4``; a phase whose ``loss`` is ``${loss}`` takes the run's ``loss.*``.

Phase keys: ``order`` (required), ``loss`` (a loss node), ``max_epochs`` / ``max_steps``, ``optimizer``,
``scheduler``, ``trainer`` and ``callbacks`` (merged over the run's), and for a phase with its own
teacher (general distillation): ``models`` (a pair from :mod:`distill.models.pairs`), ``data`` (a data
module node, e.g. :class:`distill.data.text.TextDataModule`), ``seed`` and ``cache``. Such a phase builds
its student from the ``student`` preset and its own teacher, and hands on its result as a saved model
folder from which the task student is loaded; it must come before the phases that use the task teacher.
A ``cache: true`` phase is stored under ``paths.cache_dir/phases/<name>-<key>`` (the key hashes its
inputs: student, loss, optimizer, schedule, epochs, models, data fingerprint, seed) and reused by any run
with the same inputs.

A finished phase leaves ``done.json`` and its result (``student.pt`` or ``student/``); a rerun of the
same run folder — or, with ``ckpt_path=auto``, a fresh run launched with the same overrides — skips the
finished phases and resumes the unfinished one from its ``last.ckpt``. The final phase restores its best
checkpoint (by ``val/score``) like a plain run; with ``quant=qat_int8`` only the final phase trains with
fake quantization (matching attention or hidden states in int8 would fit weights that the prediction
phase moves anyway).
"""

from distill.phases.fit import DONE, STATE, STUDENT, adopt_previous_run, fit_phase, fit_task_phases
from distill.phases.general import phase_key, run_general_phase
from distill.phases.plan import (
    Phase,
    check_attention,
    model_configs,
    phase_config,
    phase_data,
    phase_objective,
    phase_seed,
    plan_phases,
)

__all__ = [
    "DONE", "STATE", "STUDENT", "Phase", "adopt_previous_run", "check_attention", "fit_phase", "fit_task_phases",
    "model_configs", "phase_config", "phase_data", "phase_key", "phase_objective", "phase_seed", "plan_phases",
    "run_general_phase",
]
