"""What every tuner shares: a config naming its target matrices, the check that runs before any
work, the modules it adapts, and the parameters it trains.

A tuner adapts encoder matrices (`q`, `k`, `v`, `out`, `fc1`, `fc2` of chosen layers, the same
target syntax as masks: `core.targets`) through weight transforms, so its change acts through the
weight itself and fairseq's fused attention sees it; merging is baking the stack
(`core.parametrize.bake_module` / `bake_state_dict`). Errors name the option as `<method>.<key>`,
which the plugin maps onto its config keys.
"""
from dataclasses import dataclass, fields
from typing import ClassVar, Dict, Iterator, List, Mapping, Tuple

import torch
from torch import nn

from ..targets import TargetSelection, parse_weight_name
from ..transforms import ADAPT, TRANSFORM_KINDS, TransformError, WeightTransform, module_of, stack_of, stacks


class TunerError(ValueError):
    """A tuner config or its application is invalid; the message names the option or weight."""


@dataclass(frozen=True)
class TunerConfig:
    """Options every tuner has. Subclasses add theirs, set `method`, and give the closed-form
    count of what they train (`trainable_count`), which the tests hold the built model to."""

    method: ClassVar[str]
    targets: str = "all"
    layers: str = "all"

    def key(self, name: str) -> str:
        return f"{self.method}.{name}"

    def selection(self) -> TargetSelection:
        try:
            return TargetSelection.parse(self.targets, self.layers, keys=(self.key("targets"), self.key("layers")))
        except ValueError as error:
            raise TunerError(str(error)) from None

    def check(self) -> None:
        """Raises TunerError for a bad option before anything is built."""
        self.selection()

    def check_rank(self, name: str = "r") -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TunerError(f"{self.key(name)}: a rank is an integer >= 1 (got {value!r})")

    def trainable_count(self, shapes: Mapping[str, Tuple[int, int]]) -> int:
        """Parameters the tuner trains on the target matrices `shapes` (name -> (d_out, d_in))."""
        raise NotImplementedError

    def options(self) -> Dict[str, object]:
        """The config as plain values (recorded with adapter files and in reports)."""
        return {"method": self.method, **{f.name: getattr(self, f.name) for f in fields(self)}}


def target_modules(root: nn.Module, config: TunerConfig, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """(model-relative weight name, module) of every matrix the config targets, in layer-major
    canonical order; refuses a target the model lacks, and a weight that already holds a tuner
    (two tuners on one weight are not supported: their order would be arbitrary)."""
    config.check()
    try:
        names = config.selection().names(encoder_depth(root, prefix))
    except ValueError as error:
        raise TunerError(str(error)) from None
    found = []
    for name in names:
        try:
            module = module_of(root, name, prefix)
        except TransformError:
            raise TunerError(f"{config.key('targets')}: the model has no {prefix + name!r}") from None
        stack = stack_of(module)
        held = [f"{kind} {tname!r}" for kind, tname, t in (stack.transforms() if stack is not None else ())
                if is_tuner_transform(t)]
        if held:
            raise TunerError(f"{name}: already adapted by {held[0]}; two tuners on one weight are not supported")
        found.append((name, module))
    return found


def encoder_depth(root: nn.Module, prefix: str = "") -> int:
    """Number of encoder layers under `prefix` (0 when the module has none)."""
    layers = {parse_weight_name(name[len(prefix):] + ".weight")
              for name, _ in root.named_modules() if name.startswith(prefix)}
    indices = [parsed[0] for parsed in layers if parsed is not None]
    if not indices:
        raise TunerError(f"no wav2vec2 encoder layers under {prefix or 'the model root'!r}")
    return max(indices) + 1


TUNER_KINDS: Dict[str, str] = {}
"""transform kind -> tuner method, filled by `tuner_kind`."""


def tuner_kind(method: str):
    """Class decorator marking a registered transform kind as a tuner's (for the one-tuner check
    and for `tuner_parameters`)."""
    def mark(cls):
        TUNER_KINDS[cls.kind] = method
        return cls
    return mark


def is_tuner_transform(transform: WeightTransform) -> bool:
    return transform.kind in TUNER_KINDS


def tuner_transforms(root: nn.Module, prefix: str = "") -> Iterator[Tuple[str, WeightTransform]]:
    """(model-relative weight name, transform) for every tuner transform under prefix."""
    for name, _, stack in stacks(root, prefix):
        for _, _, transform in stack.transforms():
            if is_tuner_transform(transform):
                yield name, transform


def tuner_parameters(root: nn.Module, prefix: str = "") -> Dict[str, nn.Parameter]:
    """Full parameter name -> parameter of every tuner transform under prefix, each shared
    tensor once (under its first name), in `named_parameters` order."""
    owned = {id(p) for _, t in tuner_transforms(root, prefix) for p in t.parameters()}
    return {name: p for name, p in root.named_parameters() if id(p) in owned}


class AdditiveDelta(WeightTransform):
    """A tuner whose change is a delta added to the weight (LoRA, alpha-LoRA, AdaLoRA, S2-LoRA):
    subclasses give `delta()`; applying adds it, unmerging subtracts it."""

    stage = ADAPT

    def delta(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)

    def unmerge(self, weight: torch.Tensor) -> torch.Tensor:
        return weight - self.delta().to(weight.dtype)


def zero_init(shape) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape))


def normal_init(shape, std: float = 0.02) -> nn.Parameter:
    """The normal initialisation AdaLoRA gives its factors; S2-LoRA and alpha-LoRA reuse it."""
    return nn.Parameter(torch.randn(shape) * std)


def kaiming_init(shape) -> nn.Parameter:
    """LoRA's down-projection initialisation (Kaiming uniform with a = sqrt(5), as nn.Linear)."""
    tensor = torch.empty(shape)
    nn.init.kaiming_uniform_(tensor, a=5 ** 0.5)
    return nn.Parameter(tensor)


TRANSFORM_STATE = ".parametrizations.weight.0."
"""What separates a module path from `<kind>.<name>.<state>` in a transform's state-dict key."""
_LAYERS = "encoder.layers."


def tuner_trained_count(state: Mapping[str, torch.Tensor]) -> int:
    """Parameters the tuners of a state dict train, read off a checkpoint's or an adapter file's
    state with no model built: every tuner state entry except each kind's buffers (LoRA's alpha,
    AdaLoRA's kept flags and importance statistics), a tensor that several matrices share
    (S2-LoRA's factors, stored under each holder with one storage) counted once."""
    buffers = {kind: {name for name, _ in TRANSFORM_KINDS[kind].placeholder((2, 2), {}).named_buffers()}
               for kind in TUNER_KINDS}
    trained = {}
    for key, value in state.items():
        _, found, rest = key.partition(TRANSFORM_STATE)
        kind, _, entry = rest.split(".") if found else ("", "", "")
        if kind in TUNER_KINDS and entry not in buffers[kind]:
            trained[(value.data_ptr(), value.numel())] = value.numel()
    return sum(trained.values())


def tuner_ranks(state: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[str, int]]:
    """Model-relative weight name -> (method, rank in use) of every rank-based tuner matrix (LoRA,
    alpha-LoRA, AdaLoRA, S2-LoRA) in a state dict: a checkpoint's or an adapter file's, no model
    needed. Methods without ranks (IA3, BitFit, GLoRA's fixed factors) are left out."""
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
