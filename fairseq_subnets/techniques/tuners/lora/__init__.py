"""LoRA: config, layer (the weight transform) and model (injection)."""
from ..base import Tuner
from .config import LoraConfig
from .layer import LoraDelta
from .model import inject_lora

TUNER = Tuner(LoraConfig, inject_lora)

__all__ = ["LoraConfig", "LoraDelta", "TUNER", "inject_lora"]
