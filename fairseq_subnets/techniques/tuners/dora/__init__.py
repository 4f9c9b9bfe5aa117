"""DoRA: config, layer (the weight transform) and model (injection)."""
from ..base import Tuner
from .config import DoraConfig
from .layer import DoraChange
from .model import inject_dora

TUNER = Tuner(DoraConfig, inject_dora)

__all__ = ["DoraChange", "DoraConfig", "TUNER", "inject_dora"]
