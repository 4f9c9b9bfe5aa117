"""Putting IA3 vectors on a model's target matrices."""
from typing import List

from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules
from .config import Ia3Config, scales_input
from .layer import Ia3InputScale, Ia3OutputScale


def inject_ia3(root: nn.Module, config: Ia3Config, prefix: str = "", name: str = "default") -> List[str]:
    """Adds an IA3 vector to every target (input side for feed-forward matrices); returns the
    adapted weight names."""
    targets = target_modules(root, config, prefix)
    for weight, module in targets:
        cls = Ia3InputScale if scales_input(weight) else Ia3OutputScale
        add_transform(module, name, cls.create(tuple(module.weight.shape)))
    return [weight for weight, _ in targets]
