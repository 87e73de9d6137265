"""Pruning: importance of a model's units on calibration data, and structured cuts to a smaller geometry."""

from distill.prune.cut import CutSettings, Geometry, as_cut_settings, cut_model, resolve_geometry
from distill.prune.importance import Importance, estimate_importance

__all__ = ["CutSettings", "Geometry", "as_cut_settings", "Importance", "cut_model", "estimate_importance", "resolve_geometry"]
