"""BitFit: config, layer (the bias change) and model (injection)."""
from ..base import Tuner
from .config import BitfitConfig
from .layer import BiasChange
from .model import inject_bitfit

TUNER = Tuner(BitfitConfig, inject_bitfit)

__all__ = ["TUNER", "BiasChange", "BitfitConfig", "inject_bitfit"]
