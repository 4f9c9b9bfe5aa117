"""VeRA: config, layer (the weight transform over shared random bases) and model (injection)."""
from ..base import Tuner
from .config import VeraConfig
from .layer import VeraDelta, random_bases
from .model import inject_vera

TUNER = Tuner(VeraConfig, inject_vera)

__all__ = ["TUNER", "VeraConfig", "VeraDelta", "inject_vera", "random_bases"]
