"""IA3: config, layer (the scaling transforms), model (injection) and peft (its PEFT form)."""
from ..base import Tuner
from .config import Ia3Config
from .layer import Ia3InputScale, Ia3OutputScale
from .model import inject_ia3
from .peft import ia3_form

TUNER = Tuner(Ia3Config, inject_ia3, peft_form=ia3_form)

__all__ = ["TUNER", "Ia3Config", "Ia3InputScale", "Ia3OutputScale", "inject_ia3"]
