"""DoRA: config, layer (the weight transform), model (injection) and peft (its PEFT form)."""
from ..base import Tuner
from .config import DoraConfig
from .layer import DoraChange
from .model import inject_dora
from .peft import dora_form

TUNER = Tuner(DoraConfig, inject_dora, peft_form=dora_form)

__all__ = ["DoraChange", "DoraConfig", "TUNER", "inject_dora"]
