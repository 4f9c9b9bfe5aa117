"""GLoRA: config, layer (the weight and bias change) and model (injection)."""
from ..base import Tuner
from .config import GloraConfig
from .layer import GloraChange
from .model import inject_glora

TUNER = Tuner(GloraConfig, inject_glora)

__all__ = ["TUNER", "GloraChange", "GloraConfig", "inject_glora"]
