"""Holding chosen entries of tensors bit-identical through an optimizer step.

A technique that trains only part of a shared tensor (one language's pathway, the active
language's output layer) cannot rely on a zero gradient: Adam moves a weight with zero gradient by
its momentum, and decoupled weight decay shrinks it. So the task copies the entries the
techniques name (`held_through_step`) before the step and writes them back after it
(`unchanged_through`), which holds for any optimizer. Their Adam moments do decay in such a step
(the gradient was zero), as in any masked-gradient training.
"""
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch

Held = Tuple[torch.Tensor, Optional[torch.Tensor]]
"""A stored tensor and the bool mask of its entries to hold (None: all of it)."""


@contextmanager
def unchanged_through(held: List[Held]) -> Iterator[None]:
    """Whatever the block does (an optimizer step), the given entries end as they began, bit for
    bit. Costs one copy of the held entries."""
    saved = [(tensor, entries, tensor.detach().clone() if entries is None else tensor.detach()[entries])
             for tensor, entries in held]
    yield
    with torch.no_grad():
        for tensor, entries, values in saved:
            if entries is None:
                tensor.copy_(values)
            else:
                tensor.masked_scatter_(entries, values)
