"""Putting LoRA on a model's target matrices."""
from typing import List

from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules
from .config import LoraConfig
from .layer import LoraDelta


def inject_lora(root: nn.Module, config: LoraConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Adds a LoRA delta to every target; returns the adapted weight names."""
    targets = target_modules(root, config, prefix)
    for _, module in targets:
        add_transform(module, name, LoraDelta.create(tuple(module.weight.shape), config.r, config.alpha))
    return [weight for weight, _ in targets]
