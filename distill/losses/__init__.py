from distill.losses.attention import AttentionKL, AttentionScoreMSE, ValueRelationKL
from distill.losses.capture import capture_projections, capture_values
from distill.losses.hard import HardLabelLoss
from distill.losses.hidden import HiddenCosine, HiddenStateMSE
from distill.losses.logits import GeneralizedJSD, LogitMSE, ReverseKL
from distill.losses.objective import DistillationObjective
from distill.losses.soft import SoftTargetKL

__all__ = [
    "AttentionKL",
    "AttentionScoreMSE",
    "DistillationObjective",
    "GeneralizedJSD",
    "HardLabelLoss",
    "HiddenCosine",
    "HiddenStateMSE",
    "LogitMSE",
    "ReverseKL",
    "SoftTargetKL",
    "ValueRelationKL",
    "capture_projections",
    "capture_values",
]
