"""S2-LoRA: config, layer (the shared-factor transform) and model (injection, rank distribution)."""
from ..base import Tuner
from .config import PRUNED_RANK_THRESHOLD, S2LoraConfig
from .layer import FACTORS_TERM, SPARSITY_TERM, SharedLowRankDelta
from .model import inject_s2lora, rank_distribution

TUNER = Tuner(S2LoraConfig, inject_s2lora,
              no_peft_form="S2-LoRA's factors are shared by a group of matrices and weighted per matrix by trained "
                           "coefficients; no PEFT tuner has that form")

__all__ = ["TUNER", "FACTORS_TERM", "PRUNED_RANK_THRESHOLD", "S2LoraConfig", "SPARSITY_TERM", "SharedLowRankDelta",
           "inject_s2lora", "rank_distribution"]
