"""Tuners read off bare state dicts (a checkpoint's or an adapter file's, no model built): what
they train, the ranks they use, and the backbone's weights taken back from merged ones."""
from typing import Dict, Mapping, Tuple

import torch

from ...core.transforms import TRANSFORM_KINDS, TransformError
from .base import TUNER_KINDS

TRANSFORM_STATE = ".parametrizations.weight.0."
"""What separates a module path from `<kind>.<name>.<state>` in a transform's state-dict key."""
_LAYERS = "encoder.layers."


def tuner_trained_count(state: Mapping[str, torch.Tensor]) -> int:
    """Parameters the tuners of a state dict train: every tuner state entry except each kind's
    buffers (its `state_buffers`: LoRA's alpha, AdaLoRA's kept flags and importance statistics), a
    tensor that several matrices share (S2-LoRA's factors, stored under each holder with one
    storage) counted once."""
    trained = {}
    for key, value in state.items():
        _, found, rest = key.partition(TRANSFORM_STATE)
        kind, _, entry = rest.split(".") if found else ("", "", "")
        if kind in TUNER_KINDS and entry not in getattr(TRANSFORM_KINDS[kind], "state_buffers", ()):
            trained[(value.data_ptr(), value.numel())] = value.numel()
    return sum(trained.values())


def rank_based_methods() -> Tuple[str, ...]:
    """The tuner methods whose transforms have a rank in use (`tuner_ranks` reports them)."""
    methods = [method for kind, method in TUNER_KINDS.items() if hasattr(TRANSFORM_KINDS[kind], "rank_of_state")]
    return tuple(dict.fromkeys(methods))


def tuner_ranks(state: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[str, int]]:
    """Model-relative weight name -> (method, rank in use) of every rank-based tuner matrix
    (`rank_based_methods`) in a state dict; methods without a rank in use are left out."""
    by_transform: Dict[Tuple[str, str, str], Dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, found, rest = key.partition(TRANSFORM_STATE)
        kind, name, entry = rest.split(".") if found else ("", "", "")
        if kind in TUNER_KINDS and hasattr(TRANSFORM_KINDS[kind], "rank_of_state"):
            by_transform.setdefault((module, kind, name), {})[entry] = value
    ranks = {}
    for (module, kind, _), tensors in by_transform.items():
        position = module.find(_LAYERS)
        name = module[position:] + ".weight" if position >= 0 else module + ".weight"
        ranks[name] = (TUNER_KINDS[kind], TRANSFORM_KINDS[kind].rank_of_state(tensors))
    return ranks


def unmerge_state_dict(merged: Mapping[str, torch.Tensor], tuner_state: Mapping[str, torch.Tensor]
                       ) -> Dict[str, torch.Tensor]:
    """The backbone's weights back from merged ones. `tuner_state` holds the tuners' state under
    their model keys (`<module>.parametrizations.weight.0.<kind>.<name>.<state>`, as checkpoints
    and adapter files hold it; other keys are ignored); for each such module the merged
    `<module>.weight` (and `.bias`, where the tuner changed it) of `merged` are taken back through
    each transform's rule, last applied first. Float rounding makes this exact only to about
    1e-6 relative; a tuner whose merge cannot be undone raises TransformError naming it."""
    groups: Dict[str, Dict[Tuple[str, str], Dict[str, torch.Tensor]]] = {}
    for key, value in tuner_state.items():
        module, found, rest = key.partition(TRANSFORM_STATE)
        if found:
            kind, name, state = rest.split(".")
            groups.setdefault(module, {}).setdefault((kind, name), {})[state] = value
    unmerged = dict(merged)
    for module, transforms in groups.items():
        if f"{module}.weight" not in merged:
            raise TransformError(f"{module}.weight: not in the merged state dict")
        weight = merged[f"{module}.weight"]
        built = [TRANSFORM_KINDS[kind].from_state(tensors, tuple(weight.shape))
                 for (kind, _), tensors in transforms.items()]
        with torch.no_grad():
            for transform in reversed(built):
                weight = transform.unmerge(weight)
            unmerged[f"{module}.weight"] = weight
            if any(transform.changes_bias for transform in built):
                bias = merged[f"{module}.bias"]
                for transform in reversed(built):
                    bias = transform.unmerge_bias(bias, weight)
                unmerged[f"{module}.bias"] = bias
    return unmerged
