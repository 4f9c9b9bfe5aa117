"""GLoRA: config, layer (the weight and bias change) and model (injection)."""
from .config import GloraConfig
from .layer import GloraChange
from .model import inject_glora

__all__ = ["GloraChange", "GloraConfig", "inject_glora"]
