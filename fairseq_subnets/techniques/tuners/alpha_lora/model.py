"""Putting alpha-LoRA on a model's target matrices."""
from typing import List

from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules
from .config import AlphaLoraConfig
from .layer import AlphaLoraDelta


def inject_alpha_lora(root: nn.Module, config: AlphaLoraConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Adds an alpha-LoRA delta to every target; returns the adapted weight names."""
    targets = target_modules(root, config, prefix)
    for _, module in targets:
        add_transform(module, name, AlphaLoraDelta.create(tuple(module.weight.shape), config.r))
    return [weight for weight, _ in targets]
