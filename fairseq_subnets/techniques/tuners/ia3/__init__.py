"""IA3: config, layer (the scaling transforms) and model (injection)."""
from ..base import Tuner
from .config import Ia3Config
from .layer import Ia3InputScale, Ia3OutputScale
from .model import inject_ia3

TUNER = Tuner(Ia3Config, inject_ia3)

__all__ = ["TUNER", "Ia3Config", "Ia3InputScale", "Ia3OutputScale", "inject_ia3"]
