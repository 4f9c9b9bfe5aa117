"""Masks and transform stacks on whole models and on bare state dicts.

`core.transforms` defines the stack on one weight; this module works on a model (mask sets keyed
by model-relative weight names, with a `prefix` such as 'w2v_encoder.w2v_model.' on a CTC model)
and on state dicts without a model (baking for export, reading masks for `prune` and the tools).

State dicts of fairseq-subnets 0.2 (one mask parametrization per weight, keys
`...parametrizations.weight.0.mask` or `.0.scores` / `.0.n_pruned`) and 0.1 (a FixedMask over the
full raw weight) are read through `upgrade_legacy_keys`.
"""
import hashlib
import re
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from .targets import MaskSet, model_prefix
from .transforms import (
    DenseMask,
    FixedMask,
    MaskTransform,
    TransformError,
    WeightStack,
    adapt_bias,
    add_transform,
    module_of,
    replace_fixed_mask,
    stack_of,
    stacks,
    transform_kind,
)

DEFAULT_NAME = "default"
"""The transform name used when a caller gives none (e.g. the mask of `model.mask_path`)."""

MASK_STORAGES = ("kept", "dense")
"""How a fixed mask from a mask file is held: kept-only storage (`fixed_mask`, fastest, the mask
never changes) or full storage with a mask that may change in place (`dense_mask`)."""

_PARAMETRIZATION_KEY = re.compile(r"(?P<module>.+)\.parametrizations\.weight\.(?P<rest>.+)")
_FOLLOWED_BIAS = ".parametrizations.bias.original"
_LEGACY_SCORE_MASK_KIND = "score_mask"
"""The kind 0.2's learned masks upgrade to; a name here, since the class is the learned-masks
technique's (fairseq_subnets.techniques.learned_masks registers it)."""
_LEGACY_ENTRIES = {
    "0.mask": f"0.{FixedMask.kind}.{DEFAULT_NAME}.mask",
    "0.scores": f"0.{_LEGACY_SCORE_MASK_KIND}.{DEFAULT_NAME}.scores",
    "0.n_pruned": f"0.{_LEGACY_SCORE_MASK_KIND}.{DEFAULT_NAME}.n_pruned",
}


# ---- live modules ---------------------------------------------------------------------------


def apply_masks(root: nn.Module, masks: Mapping[str, torch.Tensor], prefix: str = "", storage: str = "kept",
                name: str = DEFAULT_NAME) -> None:
    """Masks `root.<prefix><weight name>` for each mask, keeping every other transform there.

    storage 'kept': a fixed mask storing only kept weights; a weight that holds one already gets
    the new mask (values kept by both stay, nothing pruned comes back), through new storage, so
    build optimizers afterwards. storage 'dense': a dense mask, changed in place when present."""
    if storage not in MASK_STORAGES:
        raise TransformError(f"mask storage {storage!r}: choose one of {', '.join(MASK_STORAGES)}")
    for weight_name, mask in masks.items():
        module = module_of(root, weight_name, prefix)
        if tuple(module.weight.shape) != tuple(mask.shape):
            raise TransformError(f"{weight_name}: mask shape {tuple(mask.shape)} != weight shape "
                                 f"{tuple(module.weight.shape)}")
        mask = mask.to(device=module.weight.device, dtype=torch.bool)
        stack = stack_of(module)
        if storage == "kept":
            if stack is not None and stack.kept_only_mask() is not None:
                replace_fixed_mask(module, mask)
            else:
                add_transform(module, name, FixedMask(mask))
        elif stack is not None and stack.get(DenseMask.kind, name) is not None:
            stack.get(DenseMask.kind, name).set_mask(mask)
        else:
            add_transform(module, name, DenseMask(mask))


def _effective_kept(stack: WeightStack) -> Optional[torch.Tensor]:
    kept = None
    for _, _, transform in stack.transforms():
        if isinstance(transform, MaskTransform):
            mask = transform.kept()
            kept = mask if kept is None else kept & mask
    return kept


def masks_from_module(root: nn.Module, prefix: str = "") -> MaskSet:
    """The effective kept-mask of every masked weight under `prefix` (all its masks combined; the
    active language for per-language masks), as copies, keyed by name relative to the prefix."""
    masks = {}
    for weight_name, _, stack in stacks(root, prefix):
        kept = _effective_kept(stack)
        if kept is not None:
            masks[weight_name] = kept.cpu()
    return masks


def mask_state_digest(root: nn.Module, prefix: str = "") -> str:
    """sha256 over every mask every transform under `prefix` can apply (all languages, binarised
    scores) and every other selection a transform holds (AdaLoRA's kept triplets), in a fixed
    order; empty string when there are none. Equal digests on all ranks of a distributed run mean
    identical masks."""
    digest = hashlib.sha256()
    found = False
    for weight_name, _, stack in sorted(stacks(root, prefix), key=lambda item: item[0]):
        for kind, name, transform in stack.transforms():
            for label, mask in transform.named_selection().items():
                found = True
                digest.update(f"{weight_name}/{kind}/{name}/{label}:{tuple(mask.shape)}".encode())
                digest.update(mask.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest() if found else ""


def bake_module(root: nn.Module) -> None:
    """Replaces every transformed weight by a plain Parameter holding its current effective value
    (pruned entries exactly zero, deltas merged); the model then has stock keys."""
    for module in root.modules():
        if parametrize.is_parametrized(module):
            # The bias first: a BiasFollower reads the weight's stack.
            for tensor_name in sorted(module.parametrizations.keys(), key=lambda name: name == "weight"):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


def prepare_for_state(root: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> Dict:
    """Makes `state_dict` loadable into `root`: legacy keys upgraded (returned as a new dict), and
    fixed masks made to match the stored ones, since kept-only storage is sized by its mask. A
    weight with a stored fixed mask but no transform in the model (a checkpoint written before
    models recorded their transform plan) gets one."""
    state_dict = upgrade_legacy_keys(state_dict)
    for path, entries in _parametrized_groups(state_dict).items():
        if not path.startswith(prefix):
            continue
        mask_key = next((key for rest, key in entries.items() if rest.startswith(f"0.{FixedMask.kind}.")
                         and rest.endswith(".mask")), None)
        if mask_key is None:
            continue
        stored = state_dict[mask_key].to(torch.bool)
        module = root.get_submodule(path)
        stack = stack_of(module)
        fixed = stack.kept_only_mask() if stack is not None else None
        if fixed is None:
            add_transform(module, mask_key.split(".")[-2], FixedMask(stored.to(module.weight.device)))
        elif not torch.equal(fixed.mask.cpu(), stored.cpu()):
            replace_fixed_mask(module, stored.to(fixed.mask.device))
    return state_dict


# ---- bare state dicts ---------------------------------------------------------------------


def upgrade_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A copy with 0.1/0.2 mask keys (`...weight.0.mask`, `.0.scores`, `.0.n_pruned`) renamed to
    the stack layout (`...weight.0.<kind>.default.<state>`)."""
    upgraded = {}
    for key, value in state_dict.items():
        match = _PARAMETRIZATION_KEY.fullmatch(key)
        if match and match["rest"] in _LEGACY_ENTRIES:
            key = f"{match['module']}.parametrizations.weight.{_LEGACY_ENTRIES[match['rest']]}"
        upgraded[key] = value
    return upgraded


def _parametrized_groups(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, str]]:
    """module path -> {'original' | '0.<kind>.<name>.<state>': key} for transformed weights."""
    groups: Dict[str, Dict[str, str]] = {}
    for key in state_dict:
        match = _PARAMETRIZATION_KEY.fullmatch(key)
        if match:
            groups.setdefault(match["module"], {})[match["rest"]] = key
    return groups


def _stack_from_state(path: str, entries: Dict[str, str], state_dict) -> Tuple[WeightStack, torch.Tensor]:
    """The WeightStack and `original` a state dict holds for one weight, rebuilt from the keys."""
    if "original" not in entries:
        raise TransformError(f"{next(iter(entries.values()))}: no '{path}.parametrizations.weight.original' beside it")
    original = state_dict[entries["original"]]
    by_transform: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for rest, key in entries.items():
        if rest == "original":
            continue
        parts = rest.split(".")
        if len(parts) != 4 or parts[0] != "0":
            raise TransformError(f"{key}: not a fairseq-subnets weight transform; cannot bake it")
        by_transform.setdefault((parts[1], parts[2]), {})[parts[3]] = state_dict[key]
    kinds = {kind: transform_kind(kind, f"{path}.parametrizations.weight.0.{kind}.{name}")
             for kind, name in by_transform}
    shape = _weight_shape(original, by_transform)
    stack = WeightStack()
    for (kind, name), tensors in by_transform.items():
        stack.add(name, kinds[kind].from_state(tensors, shape))
    return stack, original


def _weight_shape(original: torch.Tensor, by_transform) -> Tuple[int, ...]:
    if original.dim() > 1:
        return tuple(original.shape)
    fixed = by_transform.get(next((k for k in by_transform if k[0] == FixedMask.kind), None), {})
    if "mask" not in fixed:
        raise TransformError("a 1-D stored weight without a fixed mask to expand it")
    return tuple(fixed["mask"].shape)


def _check_original(path: str, stack: WeightStack, original: torch.Tensor) -> None:
    fixed = stack.kept_only_mask()
    if fixed is None or original.dim() != 1:
        return
    if original.numel() != int(fixed.mask.sum()):
        raise TransformError(f"{path}.parametrizations.weight.original: holds {original.numel()} values; its mask "
                             f"of shape {tuple(fixed.mask.shape)} keeps {int(fixed.mask.sum())}")


def _select(stack: WeightStack, path: str, language: Optional[str]) -> None:
    for _, _, transform in stack.transforms():
        if transform.languages:
            if language is None:
                raise TransformError(f"{path}: holds per-language masks ({', '.join(transform.languages)}); "
                                     "name the language")
            transform.select(language)


def _each_stack(state_dict, prefix: Optional[str], language: Optional[str]):
    for path, entries in _parametrized_groups(state_dict).items():
        if prefix is not None and not path.startswith(prefix):
            continue
        stack, original = _stack_from_state(path, entries, state_dict)
        _check_original(path, stack, original)
        _select(stack, path, language)
        yield path, entries, stack, original


def masks_from_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: Optional[str] = None,
                          language: Optional[str] = None) -> MaskSet:
    """The effective kept-masks stored in a state dict (all masks of a weight combined; scores
    binarised; `language` picks per-language masks), keyed by model-relative name; prefix detected
    when None."""
    state_dict = upgrade_legacy_keys(state_dict)
    prefix = model_prefix(state_dict.keys()) if prefix is None else prefix
    masks = {}
    for path, _, stack, _ in _each_stack(state_dict, prefix, language):
        kept = _effective_kept(stack)
        if kept is not None:
            masks[f"{path}.weight"[len(prefix):]] = kept
    return masks


def bake_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    prefix: Optional[str] = None,
    language: Optional[str] = None,
) -> Dict[str, torch.Tensor]:
    """A new state dict with stock keys: every transformed weight becomes `<module>.weight` = its
    effective weight (the stack's forward pass; `language` picks per-language masks); then, if
    `masks` are given (model-relative names, prefix detected when None), those weights are masked
    too. Needs no model; unchanged tensors are shared."""
    state_dict = upgrade_legacy_keys(state_dict)
    baked = dict(state_dict)
    for path, entries, stack, original in _each_stack(state_dict, None, language):
        with torch.no_grad():
            fixed = stack.kept_only_mask()
            if fixed is not None and original.dim() > 1:  # 0.1 layout: a full raw weight under the mask
                original = fixed.compact(original)
            baked[f"{path}.weight"] = stack(original)
            bias_key = path + _FOLLOWED_BIAS
            if bias_key in state_dict:
                baked[f"{path}.bias"] = adapt_bias(
                    stack, state_dict[bias_key], lambda: fixed.expand(original) if fixed is not None else original)
                del baked[bias_key]
        for key in entries.values():
            del baked[key]
    if masks:
        prefix = model_prefix(baked.keys()) if prefix is None else prefix
        for name, mask in masks.items():
            key = prefix + name
            if key not in baked:
                raise TransformError(f"{name}: no {key!r} in the state dict")
            if tuple(baked[key].shape) != tuple(mask.shape):
                raise TransformError(f"{name}: mask shape {tuple(mask.shape)} != weight shape {tuple(baked[key].shape)}")
            baked[key] = torch.where(mask.to(torch.bool), baked[key], 0.0)
    return baked
