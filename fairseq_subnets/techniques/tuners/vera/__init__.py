"""VeRA: config, layer (the weight transform over shared random bases), model (injection) and peft (its PEFT form)."""
from ..base import Tuner
from .config import VeraConfig
from .layer import VeraDelta, random_bases
from .model import inject_vera
from .peft import vera_form

TUNER = Tuner(VeraConfig, inject_vera, peft_form=vera_form)

__all__ = ["TUNER", "VeraConfig", "VeraDelta", "inject_vera", "random_bases"]
