"""Pathway updates (ASR Pathways, Yang et al. 2023 Sec. 3.2): an update on one language's batch
changes only the shared weights inside that language's mask.

Masking the forward pass gives the weights outside the mask a zero gradient, but that does not
keep them still: Adam moves a weight with zero gradient by its momentum, and decoupled weight
decay shrinks it. So the values outside the active mask are copied before the optimizer step and
written back after it (`unchanged_through`), which holds for any optimizer. Their Adam moments do
decay in such a step (the gradient was zero), as in any masked-gradient training.
"""
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn

from .transforms import LanguageMasks, stacks

Frozen = Tuple[torch.Tensor, Optional[torch.Tensor]]
"""A stored tensor and the bool mask of its entries to hold (None: all of it)."""


def outside_active_language_masks(root: nn.Module) -> List[Frozen]:
    """(stored weight, entries outside the active language's mask) for every per-language mask
    under root; in kept-only storage (a fixed mask below) the entries are those of the stored kept
    weights."""
    frozen = []
    for weight_name, module, stack in stacks(root):
        for _, _, transform in stack.transforms():
            if not isinstance(transform, LanguageMasks):
                continue
            outside = ~transform.kept().to(module.parametrizations.weight.original.device)
            fixed = stack.kept_only_mask()
            stored = module.parametrizations.weight.original
            if fixed is not None and stored.dim() == 1:
                outside = fixed.compact(outside)
            frozen.append((stored, outside))
    return frozen


@contextmanager
def unchanged_through(frozen: List[Frozen]) -> Iterator[None]:
    """Whatever the block does (an optimizer step), the given entries end as they began, bit for
    bit. Costs one copy of the held entries."""
    saved = [(tensor, entries, tensor.detach().clone() if entries is None else tensor.detach()[entries])
             for tensor, entries in frozen]
    yield
    with torch.no_grad():
        for tensor, entries, values in saved:
            if entries is None:
                tensor.copy_(values)
            else:
                tensor.masked_scatter_(entries, values)
