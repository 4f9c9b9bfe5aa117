"""LoRA and alpha-LoRA: config, layer (the weight transforms) and model (injection)."""
from .config import AlphaLoraConfig, LoraConfig
from .layer import AlphaLoraDelta, LoraDelta
from .model import inject_alpha_lora, inject_lora

__all__ = ["AlphaLoraConfig", "AlphaLoraDelta", "LoraConfig", "LoraDelta", "inject_alpha_lora", "inject_lora"]
