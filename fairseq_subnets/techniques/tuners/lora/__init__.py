"""LoRA: config, layer (the weight transform), model (injection) and peft (its PEFT form)."""
from ..base import Tuner
from .config import LoraConfig
from .layer import LoraDelta
from .model import inject_lora
from .peft import lora_form

TUNER = Tuner(LoraConfig, inject_lora, peft_form=lora_form)

__all__ = ["LoraConfig", "LoraDelta", "TUNER", "inject_lora"]
