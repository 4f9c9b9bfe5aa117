"""alpha-LoRA: config, layer (the weight transform) and model (injection)."""
from ..base import Tuner
from .config import AlphaLoraConfig
from .layer import AlphaLoraDelta
from .model import inject_alpha_lora

TUNER = Tuner(AlphaLoraConfig, inject_alpha_lora,
              no_peft_form="alpha-LoRA scales each low-rank delta by a trained coefficient; PEFT's LoRA scales by the "
                           "fixed lora_alpha / r")

__all__ = ["AlphaLoraConfig", "AlphaLoraDelta", "TUNER", "inject_alpha_lora"]
