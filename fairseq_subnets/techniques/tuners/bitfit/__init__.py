"""BitFit: config, layer (the bias change) and model (injection)."""
from ..base import Tuner
from .config import BitfitConfig
from .layer import BiasChange
from .model import inject_bitfit

TUNER = Tuner(BitfitConfig, inject_bitfit,
              no_peft_form="BitFit trains bias offsets alone; PEFT has no tuner of that form")

__all__ = ["TUNER", "BiasChange", "BitfitConfig", "inject_bitfit"]
