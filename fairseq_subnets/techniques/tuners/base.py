"""What every tuner shares: a config naming its target matrices, the check that runs before any
work, the modules it adapts, the parameters it trains, and the building blocks of its transforms.

A tuner adapts encoder matrices (`q`, `k`, `v`, `out`, `fc1`, `fc2` of chosen layers, the same
target syntax as masks: `core.targets`) through weight transforms, so its change acts through the
weight itself and fairseq's fused attention sees it; merging is baking the stack
(`core.parametrize.bake_module` / `bake_state_dict`).

Each option of a method is one field of its config dataclass, declared with `option(default,
help)`: the field is the option's only declaration and its default the only default; the plugin's
`model.tuner_<option>` keys are generated from these fields (`techniques.tuners.extension`). Errors
are `TunerError`s that carry the option they are about, so each caller names it its own way
(`<method>.<option>` here, `model.tuner_<option>` in fairseq).
"""
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Callable, ClassVar, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Type

import torch
from torch import nn

from ...core.targets import TargetError, TargetSelection, parse_weight_name
from ...core.transforms import ADAPT, TransformError, WeightTransform, module_of, stack_of, stacks
from .peft_form import PeftFormMaker

RANK = "rank"
"""Field metadata flag of an option that is a rank: an integer >= 1, at most the rank of every
matrix the tuner adapts."""


class TunerError(ValueError):
    """A tuner config or its application is invalid. `option` is the config option at fault (None
    when the fault is a weight or the model), `method` its tuner, `reason` what is wrong; `str()`
    names the option as `<method>.<option>`, and `message(key)` under any other key."""

    def __init__(self, reason: str, option: Optional[str] = None, method: Optional[str] = None):
        self.reason, self.option, self.method = reason, option, method
        key = option if option is None or method is None else f"{method}.{option}"
        super().__init__(self.message(key))

    def message(self, key: Optional[str]) -> str:
        return f"{key}: {self.reason}" if key is not None else self.reason


def option(default, help: str, rank: bool = False) -> Field:
    """One option of a tuner config: its default and its help text (shown by fairseq for the
    generated `model.tuner_<option>` key); `rank` marks it as a rank (see RANK)."""
    return field(default=default, metadata={"help": help, RANK: rank})


def option_help(config: type, name: str) -> str:
    """The help of option `name` of a config class: from the nearest class that declares it with
    one (a method may change an option's default only, e.g. `targets`)."""
    for cls in config.__mro__:
        declared = cls.__dict__.get("__dataclass_fields__", {}).get(name)
        if declared is not None and "help" in declared.metadata:
            return declared.metadata["help"]
    raise TypeError(f"{config.__name__}.{name}: declare it with tuners.base.option(default, help)")


@dataclass(frozen=True)
class TunerConfig:
    """Options every tuner has. Subclasses add theirs (with `option`), set `method`, and give the
    closed-form count of what they train (`trainable_count`), which the tests hold the built model
    to."""

    method: ClassVar[str]
    targets: str = option("all", "matrices the tuner adapts: q, k, v, out, fc1, fc2 (comma-separated) or the "
                                 "groups attn, ffn, all")
    layers: str = option("all", "encoder layers adapted: all, 0-5, 0,3,5 or 0-3,8-11")

    def error(self, option_name: str, reason: str) -> TunerError:
        return TunerError(reason, option_name, self.method)

    def selection(self) -> TargetSelection:
        try:
            return TargetSelection.parse(self.targets, self.layers)
        except TargetError as error:
            raise self.error(error.key, error.reason) from None

    def rank_options(self) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.metadata.get(RANK))

    def check(self) -> None:
        """Raises TunerError for a bad option before anything is built."""
        self.selection()
        for name in self.rank_options():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise self.error(name, f"a rank is an integer >= 1 (got {value!r})")

    def check_shapes(self, shapes: Mapping[str, Tuple[int, int]]) -> None:
        """Refuses a rank above the rank of a target matrix (name -> (d_out, d_in)): the factors
        could not be independent, so the extra rank would only cost parameters."""
        for name in self.rank_options():
            value = getattr(self, name)
            for weight, (d_out, d_in) in shapes.items():
                if value > min(d_out, d_in):
                    raise self.error(name, f"{value} is above the rank {min(d_out, d_in)} of {weight} "
                                           f"({d_out}x{d_in}); a rank is at most the smaller side of every "
                                           f"matrix adapted")

    def check_run(self, max_update: int, max_update_key: str) -> None:
        """Refuses options that cannot take effect in a run of `max_update` updates (the run's
        setting is named `max_update_key` in the message)."""

    def trainable_count(self, shapes: Mapping[str, Tuple[int, int]]) -> int:
        """Parameters the tuner trains on the target matrices `shapes` (name -> (d_out, d_in))."""
        raise NotImplementedError

    def options(self) -> Dict[str, object]:
        """The config as plain values (recorded with adapter files and in reports)."""
        return {"method": self.method, **{f.name: getattr(self, f.name) for f in fields(self)}}


def option_default(declared: Field):
    """An option's default as a user reads it (None: the option is required)."""
    return None if declared.default is MISSING else declared.default


class Tuner(NamedTuple):
    """What a method's package exposes as `TUNER` for the registry: its config class, the
    injection putting it on a model, optionally a step after each optimizer step (AdaLoRA's
    allocator), which returns the values to log, and exactly one of its PEFT form (`peft_form`)
    or the one line saying why PEFT has none (`no_peft_form`), which `adapters export --format
    peft` writes or refuses with."""

    config: Type[TunerConfig]
    inject: Callable[..., List[str]]
    after_optimizer_step: Optional[Callable[[TunerConfig, nn.Module, str, int], Dict[str, float]]] = None
    peft_form: Optional[PeftFormMaker] = None
    no_peft_form: Optional[str] = None


def target_modules(root: nn.Module, config: TunerConfig, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """(model-relative weight name, module) of every matrix the config targets, in layer-major
    canonical order; refuses a target the model lacks, a rank above a target's rank, and a weight
    that already holds a tuner (two tuners on one weight are not supported: their order would be
    arbitrary)."""
    config.check()
    try:
        names = config.selection().names(encoder_depth(root, prefix))
    except TargetError as error:
        raise config.error(error.key, error.reason) from None
    found = []
    for name in names:
        try:
            module = module_of(root, name, prefix)
        except TransformError:
            raise config.error("targets", f"the model has no {prefix + name!r}") from None
        stack = stack_of(module)
        held = [f"{kind} {tname!r}" for kind, tname, t in (stack.transforms() if stack is not None else ())
                if is_tuner_transform(t)]
        if held:
            raise TunerError(f"{name}: already adapted by {held[0]}; two tuners on one weight are not supported")
        found.append((name, module))
    config.check_shapes({name: tuple(module.weight.shape) for name, module in found})
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


def rank_and_alpha(down: torch.Tensor, alpha) -> Dict[str, object]:
    """The options of a transform scaled by alpha / r, read off its down-projection (r x d_in) and
    its alpha: what its plan records, from the transform or from its state alike (LoRA, DoRA)."""
    return {"r": down.shape[0], "alpha": float(alpha)}


def required_options(kind: str, options: Mapping[str, object], names: Tuple[str, ...]) -> Tuple:
    """The values of `names` in a transform plan entry's options, for a placeholder: a plan records
    every option its transform was built with, so a missing one is refused (a placeholder has no
    defaults of its own, which could silently differ from the method's)."""
    missing = [name for name in names if name not in options]
    if missing:
        raise TransformError(f"{kind}: the transform plan's options lack {', '.join(missing)} "
                             f"(a {kind} transform is rebuilt from {', '.join(names)})")
    return tuple(options[name] for name in names)


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


class LowRankDelta(AdditiveDelta):
    """W + scale * B A with B (d_out x r) and A (r x d_in) (LoRA, alpha-LoRA); subclasses say what
    `scale` is."""

    def __init__(self, down: nn.Parameter, up: nn.Parameter):
        super().__init__()
        self.lora_A = down
        self.lora_B = up

    def scale(self) -> torch.Tensor:
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        return self.scale() * (self.lora_B @ self.lora_A)

    def weight_shape(self):
        return (self.lora_B.shape[0], self.lora_A.shape[1])

    def rank(self) -> int:
        return self.lora_A.shape[0]

    @classmethod
    def rank_of_state(cls, tensors) -> int:
        """The rank in use of a transform stored as `tensors` (its state entries)."""
        return tensors["lora_A"].shape[0]


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
