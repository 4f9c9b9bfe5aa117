"""alpha-LoRA: config, layer (the weight transform) and model (injection)."""
from ..base import Tuner
from .config import AlphaLoraConfig
from .layer import AlphaLoraDelta
from .model import inject_alpha_lora

TUNER = Tuner(AlphaLoraConfig, inject_alpha_lora)

__all__ = ["AlphaLoraConfig", "AlphaLoraDelta", "TUNER", "inject_alpha_lora"]
