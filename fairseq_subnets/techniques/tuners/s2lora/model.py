"""Putting S2-LoRA on a model's target matrices, with one factor pair per group and shape."""
from typing import Dict, List, Tuple

from torch import nn

from ....core.transforms import add_transform
from ..base import target_modules, tuner_transforms
from .config import S2LoraConfig, module_group
from .layer import SharedLowRankDelta


def inject_s2lora(root: nn.Module, config: S2LoraConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Adds S2-LoRA to every target: the first matrix of each (module group, shape) creates and
    owns the pair, the others share it; returns the adapted weight names."""
    targets = target_modules(root, config, prefix)
    owners: Dict[Tuple, SharedLowRankDelta] = {}
    for weight, module in targets:
        shape = tuple(module.weight.shape)
        key = (module_group(weight), shape)
        transform = SharedLowRankDelta(shape, config.r, key[0], config.sparsity_weight / len(targets),
                                       config.factor_weight, owner=key not in owners)
        if key in owners:
            transform.share(owners[key])
        else:
            owners[key] = transform
        add_transform(module, name, transform)
    return [weight for weight, _ in targets]


def rank_distribution(root: nn.Module, prefix: str = "") -> Dict[str, int]:
    """Model-relative weight name -> ranks in use (|s| >= 1e-4) of every S2-LoRA matrix."""
    return {weight: t.rank() for weight, t in tuner_transforms(root, prefix) if isinstance(t, SharedLowRankDelta)}
