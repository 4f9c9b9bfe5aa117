"""The registered tuner methods: each is one folder of this package, listed once in METHODS.

A method's package exposes `TUNER` (a `base.Tuner`: its config class, its injection, and
optionally a step after each optimizer step). Importing the registry imports every method, which
registers its transform kinds (`core.transforms.TRANSFORM_KINDS`), so a checkpoint holding any
tuner can be rebuilt and baked. The plugin's `model.tuner_<option>` keys are generated from the
methods' config fields, so adding a method needs its folder and its line here, nothing else.
"""
import importlib
from typing import Dict, List, Tuple

from torch import nn

from .base import Tuner, TunerConfig, TunerError, target_modules

METHODS = ("lora", "alpha_lora", "adalora", "glora", "bitfit", "ia3", "s2lora", "dora", "vera")
"""The method folders, in the reports' order."""


def load_tuners(methods=METHODS) -> Dict[str, Tuner]:
    """Method name -> its `TUNER`, each method's folder named as its config's `method`."""
    tuners = {}
    for folder in methods:
        tuner = importlib.import_module(f"{__package__}.{folder}").TUNER
        if tuner.config.method != folder:
            raise ImportError(f"tuner folder {folder!r} holds the config of method {tuner.config.method!r}; "
                              f"name the folder as the method")
        tuners[folder] = tuner
    return tuners


TUNERS: Dict[str, Tuner] = load_tuners()
"""Method name -> its config class and injection; the order is the reports' order."""


def tuner_config(method: str, **options) -> TunerConfig:
    """The config of `method` with `options` (unknown method or option: TunerError naming it),
    checked."""
    if method not in TUNERS:
        raise TunerError(f"unknown method {method!r} (known: {', '.join(TUNERS)})", "tuner")
    cls = TUNERS[method].config
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TunerError(f"not an option of {method} (options: {', '.join(sorted(known))})", unknown[0], method)
    config = cls(**options)
    config.check()
    return config


def inject_tuner(root: nn.Module, config: TunerConfig, prefix: str = "", name: str = "default") -> List[str]:
    """Puts the tuner on its target matrices under prefix; returns the adapted weight names."""
    return TUNERS[config.method].inject(root, config, prefix, name)


def target_shapes(root: nn.Module, config: TunerConfig, prefix: str = "") -> Dict[str, Tuple[int, int]]:
    """Model-relative name -> (d_out, d_in) of every matrix the config targets."""
    return {name: tuple(module.weight.shape) for name, module in target_modules(root, config, prefix)}
