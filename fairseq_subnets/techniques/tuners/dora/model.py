"""Putting DoRA on a model's target matrices."""
from typing import List

from torch import nn

from ....core.transforms import add_transform, base_weight
from ..base import target_modules
from .config import DoraConfig
from .layer import DoraChange


def inject_dora(root: nn.Module, config: DoraConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Adds a DoRA change to every target, its magnitudes the rows' norms of the stored weight
    (under a fixed mask: the kept weights, pruned ones being 0); returns the adapted weight names."""
    targets = target_modules(root, config, prefix)
    for _, module in targets:
        add_transform(module, name, DoraChange.create(base_weight(module), config.r, config.alpha))
    return [weight for weight, _ in targets]
