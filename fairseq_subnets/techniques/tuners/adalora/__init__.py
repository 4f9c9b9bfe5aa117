"""AdaLoRA: config, layer (the SVD-form transform), model (injection and the rank budget) and peft (its PEFT form)."""
from ..base import Tuner
from .config import AdaLoraConfig
from .layer import ORTHOGONALITY_TERM, SvdDelta
from .model import after_optimizer_step, allocate, budget_at, inject_adalora, mask_to_budget, svd_deltas
from .peft import adalora_form

TUNER = Tuner(AdaLoraConfig, inject_adalora, after_optimizer_step, peft_form=adalora_form)

__all__ = ["AdaLoraConfig", "ORTHOGONALITY_TERM", "SvdDelta", "TUNER", "allocate", "budget_at", "inject_adalora",
           "mask_to_budget", "svd_deltas"]
