"""AdaLoRA: config, layer (the SVD-form transform) and model (injection and the rank budget)."""
from .config import AdaLoraConfig
from .layer import ORTHOGONALITY_TERM, SvdDelta
from .model import allocate, budget_at, inject_adalora, mask_to_budget, svd_deltas

__all__ = ["AdaLoraConfig", "ORTHOGONALITY_TERM", "SvdDelta", "allocate", "budget_at", "inject_adalora",
           "mask_to_budget", "svd_deltas"]
