"""Pathway updates (ASR Pathways, Yang et al. 2023 Sec. 3.2): an update on one language's batch
changes only the shared weights inside that language's mask.

Masking the forward pass gives the weights outside the mask a zero gradient, which does not keep
them still (Adam's momentum, decoupled weight decay), so the technique names them to the task as
held through every optimizer step (`core.holding.unchanged_through`).
"""
from typing import List

from torch import nn

from ...core.holding import Held
from ...core.transforms import stacks
from .layer import LanguageMasks


def outside_active_language_masks(root: nn.Module) -> List[Held]:
    """(stored weight, entries outside the active language's mask) for every per-language mask
    under root; in kept-only storage (a fixed mask below) the entries are those of the stored kept
    weights."""
    held = []
    for weight_name, module, stack in stacks(root):
        for _, _, transform in stack.transforms():
            if not isinstance(transform, LanguageMasks):
                continue
            outside = ~transform.kept().to(module.parametrizations.weight.original.device)
            fixed = stack.kept_only_mask()
            stored = module.parametrizations.weight.original
            if fixed is not None and stored.dim() == 1:
                outside = fixed.compact(outside)
            held.append((stored, outside))
    return held
