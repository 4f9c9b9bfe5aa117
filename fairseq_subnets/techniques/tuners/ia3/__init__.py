"""IA3: config, layer (the scaling transforms) and model (injection)."""
from .config import Ia3Config
from .layer import Ia3InputScale, Ia3OutputScale
from .model import inject_ia3

__all__ = ["Ia3Config", "Ia3InputScale", "Ia3OutputScale", "inject_ia3"]
