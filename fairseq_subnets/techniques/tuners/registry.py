"""Parameter-efficient tuners on a frozen backbone: LoRA, alpha-LoRA, AdaLoRA, GLoRA, BitFit, IA3
and S2-LoRA, each a folder of config (options, checks, closed-form trainable count), layer (its
weight transforms) and model (putting it on a model).

Every tuner acts through weight transforms (`core.transforms`), so fairseq's fused attention sees
it, and merging is baking: `core.parametrize.bake_module` on a model, `bake_state_dict` on a bare
state dict. `unmerge_state_dict` takes merged weights back to the backbone where the method allows.
"""
from typing import Callable, Dict, List, Mapping, NamedTuple, Tuple, Type

import torch
from torch import nn

from ..transforms import TRANSFORM_KINDS, TransformError

from .adalora import AdaLoraConfig, inject_adalora
from .base import (
    TRANSFORM_STATE, TUNER_KINDS, TunerConfig, TunerError, target_modules, tuner_parameters, tuner_ranks,
    tuner_trained_count, tuner_transforms,
)
from .bitfit import BitfitConfig, inject_bitfit
from .glora import GloraConfig, inject_glora
from .ia3 import Ia3Config, inject_ia3
from .lora import AlphaLoraConfig, LoraConfig, inject_alpha_lora, inject_lora
from .s2lora import S2LoraConfig, inject_s2lora


class Tuner(NamedTuple):
    config: Type[TunerConfig]
    inject: Callable[..., List[str]]


TUNERS: Dict[str, Tuner] = {
    config.method: Tuner(config, inject)
    for config, inject in (
        (LoraConfig, inject_lora),
        (AlphaLoraConfig, inject_alpha_lora),
        (AdaLoraConfig, inject_adalora),
        (GloraConfig, inject_glora),
        (BitfitConfig, inject_bitfit),
        (Ia3Config, inject_ia3),
        (S2LoraConfig, inject_s2lora),
    )
}
"""Method name -> its config class and injection; the order is the reports' order."""


def tuner_config(method: str, **options) -> TunerConfig:
    """The config of `method` with `options` (unknown method or option: TunerError naming it),
    checked."""
    if method not in TUNERS:
        raise TunerError(f"tuner: unknown method {method!r} (known: {', '.join(TUNERS)})")
    cls = TUNERS[method].config
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TunerError(f"{method}.{unknown[0]}: not an option of {method} (options: {', '.join(sorted(known))})")
    config = cls(**options)
    config.check()
    return config


def inject_tuner(root: nn.Module, config: TunerConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Puts the tuner on its target matrices under prefix; returns the adapted weight names."""
    return TUNERS[config.method].inject(root, config, prefix, name)


def target_shapes(root: nn.Module, config: TunerConfig, prefix: str = "") -> Dict[str, Tuple[int, int]]:
    """Model-relative name -> (d_out, d_in) of every matrix the config targets."""
    return {name: tuple(module.weight.shape) for name, module in target_modules(root, config, prefix)}


def freeze_all_but_tuners(root: nn.Module, keep: Callable[[str], bool] = lambda name: False) -> List[str]:
    """Stops gradients to every parameter except the tuners' own and those `keep(name)` accepts
    (e.g. a CTC output layer); returns the trainable parameter names."""
    tuned = {id(p) for p in tuner_parameters(root).values()}
    trainable = []
    for name, parameter in root.named_parameters():
        parameter.requires_grad_(id(parameter) in tuned or keep(name))
        if parameter.requires_grad:
            trainable.append(name)
    return trainable


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


__all__ = ["AdaLoraConfig", "AlphaLoraConfig", "BitfitConfig", "GloraConfig", "Ia3Config", "LoraConfig",
           "S2LoraConfig", "TRANSFORM_STATE", "TUNERS", "TUNER_KINDS", "TunerConfig", "TunerError", "freeze_all_but_tuners",
           "inject_tuner", "target_shapes", "tuner_config", "tuner_parameters", "tuner_ranks", "tuner_trained_count", "tuner_transforms",
           "unmerge_state_dict"]
