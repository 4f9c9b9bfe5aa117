"""Iterative pruning inside one training run (ASR Pathways, Yang et al. 2023 Sec. 3.1 and 3.3):
the schedule of pruning events, the rewind point of lottery-ticket rewinding, and group lasso.

Schedule: every `interval` updates (T) a pruning event removes `fraction` (p) of the weights
still kept, by `core.pruning.prune_within`, until the target sparsity: after n events
(1 - p)^n of the weights are kept, and the event that would pass the target stops exactly at it.
The events fall at updates T, 2T, ..., nT; afterwards the mask stays as it is. Everything about
the schedule follows from the update count, so a resumed run needs no state besides the masks.

Group lasso (Yang Eq. 1): sum_i lambda_i sum_g ||W_g||_2 over the blocks g (8x1 by default) of
each prunable matrix i. The paper sets lambda_i from the layer's average group norm following its
reference [6] without stating the rule; `LAMBDA_RULES` are the choices:
- 'reference' (the default): lambda_i = strength / m_i, with m_i the mean norm of matrix i's kept
  blocks when the run starts and again after every pruning event, fixed in between. Every matrix
  starts with the same term, strength x its block count, whatever its scale; and because m_i does
  not follow the weights between events, the logged term falls as the blocks shrink.
- 'current': lambda_i = strength / (the mean kept-block norm now, detached), recomputed at every
  step. Its gradient follows the weights' scale at every step, but the term's value is then the
  constant strength x block count, so its log says nothing.
- 'constant': lambda_i = strength for every matrix.
"""
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

from ...core.pruning import group_norms, pruned_count

LAMBDA_RULES = ("reference", "current", "constant")
"""How group lasso sets lambda_i (see the module docstring)."""
PRUNING_CRITERIA = ("magnitude", "block")
PRUNING_SCOPES = ("layer", "global")
_METHODS = {("magnitude", "layer"): "layer-l1", ("magnitude", "global"): "global-l1",
            ("block", "layer"): "block-l2", ("block", "global"): "global-block-l2"}
_SPARSITY_TOLERANCE = 1e-12
"""(1 - p)^n is computed in floats: a schedule whose target is exactly such a power (0.8^2 = 0.64)
reaches it in n events, not n + 1."""


def pruning_method(criterion: str, scope: str) -> str:
    """The `core.pruning` method of a criterion (magnitude, block) over a scope (layer: each matrix
    pruned to the same sparsity, the paper's choice; global: all prunable matrices ranked together)."""
    if criterion not in PRUNING_CRITERIA:
        raise ValueError(f"criterion {criterion!r}: choose one of {', '.join(PRUNING_CRITERIA)}")
    if scope not in PRUNING_SCOPES:
        raise ValueError(f"scope {scope!r}: choose one of {', '.join(PRUNING_SCOPES)}")
    return _METHODS[criterion, scope]


@dataclass(frozen=True)
class PruningSchedule:
    """Every `interval` updates, prune `fraction` of what is kept, until `target_sparsity`."""

    interval: int
    fraction: float
    target_sparsity: float

    def __post_init__(self):
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"interval={self.interval!r}: prune every T >= 1 updates")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction={self.fraction!r}: the share of the remaining weights pruned at each event "
                             "lies strictly between 0 and 1 (Yang et al.: 0.2)")
        if not 0.0 < self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity={self.target_sparsity!r}: lies strictly between 0 and 1")

    @property
    def events(self) -> int:
        """How many events reach the target (the last one clipped to it)."""
        return max(1, math.ceil(math.log1p(-self.target_sparsity + _SPARSITY_TOLERANCE)
                                / math.log1p(-self.fraction)))

    @property
    def final_update(self) -> int:
        """The update after which the target is reached and the mask is fixed."""
        return self.events * self.interval

    def sparsity_after(self, events: int) -> float:
        """1 - (1 - p)^events, and the target from the last event on."""
        if events >= self.events:
            return self.target_sparsity
        return 1.0 - (1.0 - self.fraction) ** events

    def events_done(self, updates_done: int) -> int:
        return min(updates_done // self.interval, self.events)

    def event_at(self, updates_done: int) -> Optional[int]:
        """The number (1, 2, ...) of the event due once `updates_done` updates are done, or None."""
        if updates_done % self.interval or not 1 <= updates_done // self.interval <= self.events:
            return None
        return updates_done // self.interval

    def kept_after(self, events: int, units: int) -> int:
        """How many of `units` a scope keeps after `events` events (the counting rule of
        core.pruning: round(sparsity x units) pruned)."""
        return units - pruned_count(self.sparsity_after(events), units)


# ---- group lasso ------------------------------------------------------------------------------


def group_lasso(weights: Mapping[str, torch.Tensor], strengths: Mapping[str, torch.Tensor],
                block: Tuple[int, int]) -> torch.Tensor:
    """sum_i strengths[i] x sum_g ||W_g||_2 over the blocks of each weight (Yang Eq. 1)."""
    total = None
    for name, weight in weights.items():
        term = strengths[name].to(weight.dtype) * group_norms(weight, block).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("group lasso over no weights")
    return total


def mean_kept_group_norm(weight: torch.Tensor, kept: torch.Tensor, block: Tuple[int, int]) -> float:
    """The mean norm of the blocks holding a kept weight (pruned weights count as 0); 0 when the
    mask keeps nothing."""
    with torch.no_grad():
        masked = torch.where(kept, weight.float(), 0.0)
        has_kept = group_norms(kept.float(), block) > 0
        norms = group_norms(masked, block)[has_kept]
    return float(norms.mean()) if norms.numel() else 0.0


def group_lasso_strength(strength: float, mean_norm: float, rule: str = "reference") -> float:
    """lambda_i of a matrix whose mean kept-block norm (at the reference point, or now) is
    `mean_norm`, under `rule` (see the module docstring); 0 for a matrix with nothing kept."""
    if rule not in LAMBDA_RULES:
        raise ValueError(f"lambda rule {rule!r}: choose one of {', '.join(LAMBDA_RULES)}")
    if rule == "constant":
        return strength
    return strength / mean_norm if mean_norm > 0 else 0.0


# ---- lottery-ticket rewinding ---------------------------------------------------------------------


class RewindPoint(nn.Module):
    """Copies of parameters taken at one update (theta_0 of lottery-ticket rewinding), as buffers,
    so checkpoints hold them and a resumed run rewinds to the same values. Buffer names are the
    parameter names with '.' as '__'. Empty until `take`; loading a state dict creates the buffers
    it holds, so a model built before its rewind point was taken loads a checkpoint taken after."""

    def take(self, parameters: Iterable[Tuple[str, torch.Tensor]]) -> None:
        for name, parameter in parameters:
            self.register_buffer(_buffer_name(name), parameter.detach().clone())

    @property
    def taken(self) -> bool:
        return any(True for _ in self.buffers(recurse=False))

    def values(self) -> Dict[str, torch.Tensor]:
        """parameter name -> its copy."""
        return {name.replace("__", "."): tensor for name, tensor in self.named_buffers(recurse=False)}

    def rewind(self, parameters: Iterable[Tuple[str, torch.Tensor]]) -> int:
        """Copies every taken value back into its parameter (in place: optimizers keep their
        references); returns how many. A parameter without a copy is an error: the model would
        rewind partly."""
        stored = self.values()
        count = 0
        with torch.no_grad():
            for name, parameter in parameters:
                if name not in stored:
                    raise ValueError(f"{name}: no value at the rewind point (it holds {len(stored)} parameters)")
                parameter.copy_(stored[name])
                count += 1
        return count

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and "." not in name and name not in self._buffers:
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _buffer_name(parameter_name: str) -> str:
    if "__" in parameter_name:
        raise ValueError(f"{parameter_name}: a parameter name with '__' cannot be stored at a rewind point")
    return parameter_name.replace(".", "__")
