"""The learned masks' weight-transform kind (S3-Router, Fu et al. 2022): `score_mask`, a mask
binarised from trainable scores by an exact top-k with a straight-through gradient, the model-wide
top-k of scope 'global', and adding score masks to a model. Pure torch: importing this module
registers the kind, which rebuilding or baking a state dict holding it needs."""
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from ...core.parametrize import DEFAULT_NAME
from ...core.pruning import prune_smallest, pruned_count
from ...core.transforms import (
    MaskTransform, TransformError, add_transform, module_of, register_transform_kind, stacks,
)


class _StraightThrough(torch.autograd.Function):
    """The 0/1 mask in the scores' dtype; backward passes the gradient of the mask to the scores
    unchanged (the straight-through estimator: dL/dscores = dL/dmask)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return kept.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_mask: torch.Tensor):
        return grad_mask, None


def binarise_scores(scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
    """Bool mask keeping all but the n_pruned smallest scores (ties broken by position, as in
    pruning)."""
    return prune_smallest({"scores": scores.detach()}, n_pruned)["scores"]


SCORE_SCOPES = ("matrix", "global")
"""Over what a score mask's top-k runs: each matrix alone (the S3-Router code) or all matrices of
the model together (`GlobalTopK`)."""


@register_transform_kind
class ScoreMask(MaskTransform):
    """Learnable mask (S3-Router): a real-valued `scores` Parameter of the weight's shape,
    binarised by keeping all but the `n_pruned` smallest scores, trained through the
    straight-through estimator.

    In training mode the binary mask is recomputed at every forward pass, so the kept count is
    exact whatever changed the scores: fairseq's optimizers update `p.data` in place, which bumps
    no version counter, so no cache could tell. Outside training the mask is computed once and
    reused until the module changes mode or loads state, so validation and decoding pay no top-k
    per forward pass (call `refresh()` after editing scores by hand in eval mode).

    With scope 'global' the model's `GlobalTopK` decides `n_pruned` of every member from all
    scores together and hands each member its mask before the forward pass; `n_pruned` is then
    that matrix's share, and `kept()` from it alone gives the same mask (same tie rule).

    `within` (optional, bool of the weight's shape): the weights a mask applied before this one
    keeps (a fixed subnetwork). The top-k then runs over those alone: a weight outside `within`
    is always pruned here too, whatever its score, and `sparsity` is the share of the `within`
    weights removed, so `n_pruned` counts the weights outside `within` plus that share. Without
    it the top-k runs over the whole matrix (every checkpoint before it existed)."""

    kind = "score_mask"

    def __init__(self, scores: torch.Tensor, sparsity: float, scope: str = "matrix",
                 within: Optional[torch.Tensor] = None):
        super().__init__()
        if scope not in SCORE_SCOPES:
            raise TransformError(f"score mask scope {scope!r}: choose one of {', '.join(SCORE_SCOPES)}")
        if within is not None and tuple(within.shape) != tuple(scores.shape):
            raise TransformError(f"score mask within a mask of shape {tuple(within.shape)} on scores of shape "
                                 f"{tuple(scores.shape)}")
        self.scores = nn.Parameter(scores.detach().float().clone())
        self.sparsity = float(sparsity)
        self.scope = scope
        if within is not None:
            self.register_buffer("within", within.detach().to(device=scores.device, dtype=torch.bool).clone())
        self.register_buffer("n_pruned", torch.tensor(pruned_count_within(sparsity, scores.numel(), within)))
        self._pruned = int(self.n_pruned)
        self._kept: Optional[torch.Tensor] = None
        self._given: Optional[torch.Tensor] = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.training:
            kept = self._given if self._given is not None else self.kept()
            self._given = None
        else:
            if self._kept is None or self._kept.device != weight.device:
                self._kept = self.kept().to(weight.device)
            kept = self._kept
        if torch.is_grad_enabled() and self.scores.requires_grad:
            return weight * _StraightThrough.apply(self.scores, kept).to(weight.dtype)
        return weight * kept.to(weight.dtype)

    def kept(self) -> torch.Tensor:
        return binarise_scores(self.ranked_scores(), self._pruned)

    def ranked_scores(self) -> torch.Tensor:
        """The scores the top-k ranks (detached): -inf outside `within`, so those go first."""
        scores = self.scores.detach()
        within = self._buffers.get("within")
        return scores if within is None else scores.masked_fill(~within, float("-inf"))

    def give(self, kept: torch.Tensor, n_pruned: int) -> None:
        """Sets this matrix's pruned count and the mask of its next forward pass (in training) or
        of every forward pass until the next refresh (outside it), decided by a global top-k over
        several matrices."""
        self.set_pruned_count(n_pruned)
        if self.training:
            self._given = kept
        else:
            self._kept = kept

    def set_pruned_count(self, n_pruned: int) -> None:
        if n_pruned != self._pruned:
            self.n_pruned.fill_(n_pruned)
            self._pruned = n_pruned
        self.refresh()

    def refresh(self) -> None:
        self._kept = None

    def train(self, mode: bool = True):
        self.refresh()
        return super().train(mode)

    def weight_shape(self):
        return tuple(self.scores.shape)

    def options(self):
        options = {"sparsity": self.sparsity, "scope": self.scope}
        if "within" in self._buffers:  # recorded only when present: older plans rebuild as they were
            options["within"] = True
        return options

    @classmethod
    def options_from_state(cls, tensors):
        return {"within": "within" in tensors}

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._pruned = int(self.n_pruned)
        self._given = None
        self.refresh()

    @classmethod
    def placeholder(cls, shape, options):
        within = torch.ones(shape, dtype=torch.bool) if options.get("within") else None
        return cls(torch.zeros(shape), float(options.get("sparsity", 0.0)), str(options.get("scope", "matrix")), within)


def pruned_count_within(sparsity: float, numel: int, within: Optional[torch.Tensor]) -> int:
    """How many of a matrix's `numel` weights a score mask prunes: `sparsity` of them, or, within
    a mask, every weight outside it plus `sparsity` of the weights inside it."""
    if within is None:
        return pruned_count(sparsity, numel)
    inside = int(within.sum())
    return numel - inside + pruned_count(sparsity, inside)


class GlobalTopK:
    """Exact top-k over the scores of several score masks together (scope 'global'). `decide()`,
    called before each forward pass of the model that owns the members, chooses every member's mask
    from all scores at once (`prune_smallest`: exactly the members' total pruned count; ties by
    member order, then position). It holds no state: the members' `n_pruned` buffers carry the
    allocation into checkpoints. Outside training it decides only while some member has no cached
    mask (after a mode change or a state load)."""

    def __init__(self, members: Mapping[str, ScoreMask]):
        if not members:
            raise TransformError("a global top-k needs at least one score mask")
        self.members = dict(members)

    def decide(self, total: Optional[int] = None) -> None:
        """`total`: prune this many in all (once, when the masks are new: round(sparsity x all
        weights), which the members' own rounded counts need not sum to); default: as many as the
        members prune now."""
        members = self.members.values()
        if total is None and not any(m.training for m in members) and all(m._kept is not None for m in members):
            return
        total = sum(member._pruned for member in members) if total is None else total
        kept = prune_smallest({name: member.ranked_scores() for name, member in self.members.items()}, total)
        for name, member in self.members.items():
            member.give(kept[name], member.scores.numel() - int(kept[name].sum()))


def apply_score_masks(root: nn.Module, scores: Mapping[str, torch.Tensor], sparsity: float, prefix: str = "",
                      name: str = DEFAULT_NAME, scope: str = "matrix",
                      within: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, ScoreMask]:
    """Adds a learnable score mask on each named weight; returns them by weight name (their
    `scores` are the Parameters to train; freeze the weights yourself). `within`: by weight name,
    the kept weights of a mask already there, inside which the top-k runs (ScoreMask). With scope
    'global', run `GlobalTopK(returned).decide()` before each forward pass."""
    added = {}
    for weight_name, initial in scores.items():
        module = module_of(root, weight_name, prefix)
        inside = (within or {}).get(weight_name)
        added[weight_name] = ScoreMask(initial.to(module.weight.device), sparsity, scope,
                                       None if inside is None else inside.to(module.weight.device))
        add_transform(module, name, added[weight_name])
    return added


def score_masks(root: nn.Module, prefix: str = "") -> Dict[str, ScoreMask]:
    """Every score mask under prefix, by weight name relative to it (in module order)."""
    return {weight_name: transform for weight_name, _, stack in stacks(root, prefix)
            for _, _, transform in stack.transforms() if isinstance(transform, ScoreMask)}
