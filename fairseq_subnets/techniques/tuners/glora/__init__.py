"""GLoRA: config, layer (the weight and bias change), model (injection) and peft (its PEFT form)."""
from ..base import Tuner
from .config import GloraConfig
from .layer import GloraChange
from .model import inject_glora
from .peft import glora_form

TUNER = Tuner(GloraConfig, inject_glora, peft_form=glora_form)

__all__ = ["TUNER", "GloraChange", "GloraConfig", "inject_glora"]
