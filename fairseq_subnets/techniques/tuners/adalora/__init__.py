"""AdaLoRA: config, layer (the SVD-form transform) and model (injection and the rank budget)."""
from ..base import Tuner
from .config import AdaLoraConfig
from .layer import ORTHOGONALITY_TERM, SvdDelta
from .model import after_optimizer_step, allocate, budget_at, inject_adalora, mask_to_budget, svd_deltas

TUNER = Tuner(AdaLoraConfig, inject_adalora, after_optimizer_step)

__all__ = ["AdaLoraConfig", "ORTHOGONALITY_TERM", "SvdDelta", "TUNER", "allocate", "budget_at", "inject_adalora",
           "mask_to_budget", "svd_deltas"]
