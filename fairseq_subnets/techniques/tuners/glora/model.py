"""Putting GLoRA on a model's target matrices."""
from typing import List

from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules
from .config import GloraConfig
from .layer import GloraChange


def inject_glora(root: nn.Module, config: GloraConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Adds a GLoRA change to every target (each needs a bias); returns the adapted weight names."""
    targets = target_modules(root, config, prefix)
    for _, module in targets:
        add_transform(module, name, GloraChange(tuple(module.weight.shape), config.r))
    return [weight for weight, _ in targets]
