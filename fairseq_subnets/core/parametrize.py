"""Masks on live modules, acting through the weight tensor itself.

fairseq's MultiheadAttention hands `q_proj.weight` etc. straight to F.multi_head_attention_forward
without calling the projections, so a mask must change what `module.weight` returns: we register a
`torch.nn.utils.parametrize` parametrization on it. A masked `encoder.layers.0.fc1` then has the
state-dict keys

    encoder.layers.0.fc1.parametrizations.weight.original   raw weight (what the optimizer updates)
    encoder.layers.0.fc1.parametrizations.weight.0.mask     bool buffer (FixedMask), or
    encoder.layers.0.fc1.parametrizations.weight.0.scores   real-valued Parameter (ScoreMask) and
    encoder.layers.0.fc1.parametrizations.weight.0.n_pruned int64 scalar buffer (ScoreMask)

Baking (on a live module or on a plain state dict) turns these back into `...fc1.weight` holding
the effective weight, so the result loads into stock fairseq.
"""
import re
from typing import Dict, Mapping, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from .pruning import prune_smallest, pruned_count
from .targets import MaskSet, model_prefix

_PARAMETRIZATION_KEY = re.compile(r"(?P<module>.+)\.parametrizations\.weight\.(?P<rest>.+)")


class FixedMask(nn.Module):
    """Effective weight = W where mask else exactly 0. The gradient of a pruned weight is zero
    too, and `where` (unlike W * mask) keeps the zeros exact even if a raw weight becomes inf."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, weight, 0.0)

    def kept(self) -> torch.Tensor:
        return self.mask.clone()


class _TopKStraightThrough(torch.autograd.Function):
    """0/1 mask keeping all but the n_pruned smallest scores; backward passes the gradient of the
    mask to the scores unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
        return prune_smallest({"scores": scores}, n_pruned)["scores"].to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_mask: torch.Tensor):
        return grad_mask, None


class ScoreMask(nn.Module):
    """Learnable mask (S3-Router): a real-valued `scores` Parameter of the weight's shape, binarised
    in every forward by keeping its top (1 - s) fraction of this matrix (same counting and tie
    rules as pruning), trained through the straight-through estimator. How scores are initialised
    (RI, WMI, ORI) is the caller's choice: pass the initial values in."""

    def __init__(self, scores: torch.Tensor, sparsity: float):
        super().__init__()
        self.scores = nn.Parameter(scores.detach().float().clone())
        self.register_buffer("n_pruned", torch.tensor(pruned_count(sparsity, scores.numel())))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _TopKStraightThrough.apply(self.scores, int(self.n_pruned)).to(weight.dtype)

    def kept(self) -> torch.Tensor:
        return binarise_scores(self.scores, int(self.n_pruned))


MASK_PARAMETRIZATIONS = (FixedMask, ScoreMask)


def binarise_scores(scores: torch.Tensor, n_pruned: int) -> torch.Tensor:
    """Bool mask keeping all but the n_pruned smallest scores (what ScoreMask.forward uses)."""
    return prune_smallest({"scores": scores.detach()}, n_pruned)["scores"]


def _module_of(root: nn.Module, weight_name: str, prefix: str) -> nn.Module:
    if not weight_name.endswith(".weight"):
        raise ValueError(f"{weight_name}: mask names end in '.weight'")
    path = prefix + weight_name[: -len(".weight")]
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{weight_name}: the model has no module {path!r}") from None


def _mask_parametrization(module: nn.Module):
    """The FixedMask / ScoreMask on module.weight, or None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, MASK_PARAMETRIZATIONS)), None)


def apply_masks(
    root: nn.Module, masks: Mapping[str, torch.Tensor], prefix: str = "", zero_pruned: bool = False
) -> None:
    """Masks `root.<prefix><name>` for each mask (e.g. prefix 'w2v_encoder.w2v_model.' on a CTC
    model). A weight that already holds a FixedMask gets the new mask in place, so iterative
    pruning can tighten it. `zero_pruned` also zeroes the raw pruned weights, so that
    unmasking later does not bring old values back."""
    for name, mask in masks.items():
        module = _module_of(root, name, prefix)
        weight = getattr(module, "weight")
        if tuple(weight.shape) != tuple(mask.shape):
            raise ValueError(f"{name}: mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
        existing = _mask_parametrization(module)
        if isinstance(existing, FixedMask):
            existing.mask.copy_(mask)
        elif existing is not None:
            raise ValueError(f"{name}: already holds a learnable ScoreMask; bake or remove it first")
        else:
            parametrize.register_parametrization(module, "weight", FixedMask(mask.to(weight.device)))
        if zero_pruned:
            with torch.no_grad():
                raw = module.parametrizations.weight.original
                raw.masked_fill_(~mask.to(device=raw.device, dtype=torch.bool), 0.0)


def apply_score_masks(
    root: nn.Module, scores: Mapping[str, torch.Tensor], sparsity: float, prefix: str = ""
) -> Dict[str, ScoreMask]:
    """Registers a learnable ScoreMask on each named weight; returns them by name (their
    `scores` are the Parameters to train; freeze the weights yourself)."""
    added = {}
    for name, initial in scores.items():
        module = _module_of(root, name, prefix)
        if tuple(initial.shape) != tuple(module.weight.shape):
            raise ValueError(f"{name}: scores shape {tuple(initial.shape)} != weight shape {tuple(module.weight.shape)}")
        if _mask_parametrization(module) is not None:
            raise ValueError(f"{name}: is already masked")
        added[name] = ScoreMask(initial.to(module.weight.device), sparsity)
        parametrize.register_parametrization(module, "weight", added[name])
    return added


def masks_from_module(root: nn.Module, prefix: str = "") -> MaskSet:
    """The current kept-masks of every masked weight under `prefix`, as copies, keyed by name
    relative to the prefix (the inverse of apply_masks / apply_score_masks)."""
    masks = {}
    for path, module in root.named_modules():
        mask = _mask_parametrization(module)
        if mask is not None and f"{path}.".startswith(prefix):
            masks[f"{path}.weight"[len(prefix):]] = mask.kept().cpu()
    return masks


def bake_module(root: nn.Module) -> None:
    """Replaces every parametrized tensor of every submodule by a plain Parameter holding its
    current effective value (pruned entries exactly zero); the model then has stock keys."""
    for module in root.modules():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


def _parametrized_groups(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, str]]:
    """module path -> {'original'|'0.mask'|'0.scores'|'0.n_pruned': key} for parametrized weights."""
    groups: Dict[str, Dict[str, str]] = {}
    for key in state_dict:
        match = _PARAMETRIZATION_KEY.fullmatch(key)
        if match:
            groups.setdefault(match["module"], {})[match["rest"]] = key
    return groups


def _kept_from_entries(entries: Dict[str, str], state_dict) -> torch.Tensor:
    """The kept-mask a FixedMask / ScoreMask left in a state dict (only one mask per weight)."""
    extra = sorted(set(entries) - {"original", "0.mask", "0.scores", "0.n_pruned"})
    if extra:
        raise ValueError(f"{entries[extra[0]]}: not a fairseq-subnets mask parametrization; cannot bake it")
    if "0.mask" in entries:
        return state_dict[entries["0.mask"]].to(torch.bool)
    if "0.scores" in entries and "0.n_pruned" in entries:
        return binarise_scores(state_dict[entries["0.scores"]], int(state_dict[entries["0.n_pruned"]]))
    raise ValueError(f"{next(iter(entries.values()))}: incomplete mask parametrization in the state dict")


def masks_from_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: Optional[str] = None) -> MaskSet:
    """The kept-masks stored in a state dict of a masked model (FixedMask buffers, or ScoreMask
    scores binarised), keyed by model-relative name; prefix detected when None."""
    groups = _parametrized_groups(state_dict)
    prefix = model_prefix(state_dict.keys()) if prefix is None else prefix
    return {
        f"{path}.weight"[len(prefix):]: _kept_from_entries(entries, state_dict)
        for path, entries in groups.items()
        if path.startswith(prefix)
    }


def bake_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    prefix: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """A new state dict with stock keys: every mask parametrization becomes `<module>.weight` =
    effective weight; then, if `masks` are given (model-relative names, prefix detected when
    None), those weights are masked too. Needs no model; unchanged tensors are shared."""
    baked = dict(state_dict)
    for path, entries in _parametrized_groups(state_dict).items():
        if "original" not in entries:
            raise ValueError(f"{next(iter(entries.values()))}: no '{path}.parametrizations.weight.original' beside it")
        kept = _kept_from_entries(entries, state_dict)
        for key in entries.values():
            del baked[key]
        baked[f"{path}.weight"] = torch.where(kept, state_dict[entries["original"]], 0.0)
    if masks:
        prefix = model_prefix(baked.keys()) if prefix is None else prefix
        for name, mask in masks.items():
            key = prefix + name
            if key not in baked:
                raise ValueError(f"{name}: no {key!r} in the state dict")
            if tuple(baked[key].shape) != tuple(mask.shape):
                raise ValueError(f"{name}: mask shape {tuple(mask.shape)} != weight shape {tuple(baked[key].shape)}")
            baked[key] = torch.where(mask.to(torch.bool), baked[key], 0.0)
    return baked
