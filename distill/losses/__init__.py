from distill.losses.hard import HardLabelLoss
from distill.losses.objective import DistillationObjective
from distill.losses.soft import SoftTargetKL

__all__ = ["DistillationObjective", "HardLabelLoss", "SoftTargetKL"]
