"""S2-LoRA: config, layer (the shared-factor transform) and model (injection, rank distribution)."""
from ..base import Tuner
from .config import PRUNED_RANK_THRESHOLD, S2LoraConfig
from .layer import FACTORS_TERM, SPARSITY_TERM, SharedLowRankDelta
from .model import inject_s2lora, rank_distribution

TUNER = Tuner(S2LoraConfig, inject_s2lora)

__all__ = ["TUNER", "FACTORS_TERM", "PRUNED_RANK_THRESHOLD", "S2LoraConfig", "SPARSITY_TERM", "SharedLowRankDelta",
           "inject_s2lora", "rank_distribution"]
