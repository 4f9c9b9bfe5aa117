"""Putting BitFit on a model's target matrices."""
from typing import List

from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules
from .config import BitfitConfig
from .layer import BiasChange


def inject_bitfit(root: nn.Module, config: BitfitConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Adds a learned bias change to every target; returns the adapted weight names."""
    targets = target_modules(root, config, prefix)
    for _, module in targets:
        add_transform(module, name, BiasChange(module.weight.shape[0]))
    return [weight for weight, _ in targets]
