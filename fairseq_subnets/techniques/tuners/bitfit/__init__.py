"""BitFit: config, layer (the bias change) and model (injection)."""
from .config import BitfitConfig
from .layer import BiasChange
from .model import inject_bitfit

__all__ = ["BiasChange", "BitfitConfig", "inject_bitfit"]
