"""Masks on live modules, acting through the weight tensor itself.

fairseq's MultiheadAttention hands `q_proj.weight` etc. straight to F.multi_head_attention_forward
without calling the projections, so a mask must change what `module.weight` returns: we register a
`torch.nn.utils.parametrize` parametrization on it. A masked `encoder.layers.0.fc1` then has the
state-dict keys

    encoder.layers.0.fc1.parametrizations.weight.original   FixedMask: the kept weights only, 1-D in
                                                             row-major order; ScoreMask: the raw weight
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
    """Effective weight = the kept weights scattered into a zero matrix. Only the kept weights are
    stored (`original` is 1-D), so gradients, optimizer state and checkpoints cover them alone,
    and a pruned weight is exactly zero by construction whatever the optimizer does. This is also
    what makes a masked training step cheap: no elementwise pass over pruned weights, and no Adam
    arithmetic on their (all-zero) state, which is slow on some CPUs. The scatter index (int64 per
    kept weight) is rebuilt from the mask, never saved."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())
        self.register_buffer("kept_index", _flat_kept_index(self.mask), persistent=False)

    def forward(self, kept_weights: torch.Tensor) -> torch.Tensor:
        # In place into fresh zeros: no copy of the zeros, and the backward pass is one index_select.
        full = kept_weights.new_zeros(self.mask.numel())
        return full.index_copy_(0, self.kept_index, kept_weights).view(self.mask.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """What `original` stores for a full weight (called on registration and on assignment)."""
        if tuple(weight.shape) != tuple(self.mask.shape):
            raise ValueError(f"weight shape {tuple(weight.shape)} != mask shape {tuple(self.mask.shape)}")
        return weight.reshape(-1).index_select(0, self.kept_index)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Loads a mask with as many kept weights as `original` holds (refusing others leaves this
        module consistent when torch then refuses the differently sized `original`)."""
        incoming = state_dict.get(prefix + "mask")
        if incoming is not None and int(incoming.sum()) != self.kept_index.numel():
            error_msgs.append(f"{prefix}mask keeps {int(incoming.sum())} weights, the model's {self.kept_index.numel()}; "
                              "apply the stored masks first (apply_stored_masks(model, state))")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.kept_index = _flat_kept_index(self.mask)

    def kept(self) -> torch.Tensor:
        return self.mask.clone()


def _flat_kept_index(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1).nonzero().squeeze(1)


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


def apply_masks(root: nn.Module, masks: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Masks `root.<prefix><name>` for each mask (e.g. prefix 'w2v_encoder.w2v_model.' on a CTC
    model). Pruned weights are dropped, not stored. A weight that already holds a FixedMask gets
    the new mask instead (weights kept by both keep their values; newly kept ones start at the
    effective value, 0), so iterative pruning can tighten a mask; its `original` is then a new
    tensor, so build optimizers after masking."""
    for name, mask in masks.items():
        module = _module_of(root, name, prefix)
        weight = getattr(module, "weight")
        if tuple(weight.shape) != tuple(mask.shape):
            raise ValueError(f"{name}: mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
        existing = _mask_parametrization(module)
        if isinstance(existing, ScoreMask):
            raise ValueError(f"{name}: already holds a learnable ScoreMask; bake or remove it first")
        if existing is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        parametrize.register_parametrization(module, "weight", FixedMask(mask.to(weight.device)))


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


def _effective_weight(entries: Dict[str, str], state_dict) -> torch.Tensor:
    """The weight a parametrization group stands for: a FixedMask's kept weights scattered under
    its mask, or a full raw weight (ScoreMask, or a FixedMask written by fairseq-subnets 0.1)
    with its pruned entries zeroed."""
    kept = _kept_from_entries(entries, state_dict)
    original = state_dict[entries["original"]]
    if original.shape == kept.shape:
        return torch.where(kept, original, 0.0)
    if "0.mask" in entries and original.dim() == 1 and original.numel() == int(kept.sum()):
        return FixedMask(kept)(original)
    raise ValueError(f"{entries['original']}: holds {original.numel()} values of shape {tuple(original.shape)}; "
                     f"its mask has shape {tuple(kept.shape)} with {int(kept.sum())} kept")


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


def apply_stored_masks(root: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Applies every mask under `prefix` in `state_dict` that `root` does not hold already, so that
    the state dict then loads: a FixedMask's stored size follows its mask."""
    stored = masks_from_state_dict(state_dict, prefix=prefix)
    present = masks_from_module(root, prefix=prefix)
    different = {name: mask for name, mask in stored.items()
                 if name not in present or not torch.equal(present[name], mask)}
    if different:
        apply_masks(root, different, prefix=prefix)


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
        baked[f"{path}.weight"] = _effective_weight(entries, state_dict)
        for key in entries.values():
            del baked[key]
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
