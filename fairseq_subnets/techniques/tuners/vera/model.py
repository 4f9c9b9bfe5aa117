"""Putting VeRA on a model's target matrices, all of them over one pair of random bases."""
from typing import List

from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules
from .config import VeraConfig, bases_shape
from .layer import VeraDelta, random_bases


def inject_vera(root: nn.Module, config: VeraConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Draws the bases at the largest target shape and adds a VeRA delta over them to every target;
    returns the adapted weight names."""
    targets = target_modules(root, config, prefix)
    shapes = {weight: tuple(module.weight.shape) for weight, module in targets}
    device = targets[0][1].weight.device
    bases = tuple(basis.to(device) for basis in random_bases(config.r, *bases_shape(shapes), config.projection_seed))
    for weight, module in targets:
        add_transform(module, name, VeraDelta(shapes[weight], bases, config.d_initial))
    return [weight for weight, _ in targets]
