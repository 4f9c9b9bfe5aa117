"""Which weights are prunable, and what they are called.

A mask set maps names relative to the wav2vec2 model (`encoder.layers.3.fc1.weight`) to boolean
tensors of the weight's shape (True = kept). Relative names make a mask found on a fine-tuned CTC
model (whose state dict says `w2v_encoder.w2v_model.encoder.layers...`) apply to, and compare with,
a mask found on the pretrained model (`encoder.layers...`).

A target selection is a set of module kinds (`q`, `k`, `v`, `out`, `fc1`, `fc2`, shorthands
`attn`, `ffn`, `all`) times a set of encoder layers (`all`, or ranges and lists such as
`0-5`, `0,3,5`, `0-3,8-11`). The same two strings work on the command line
(`--targets ffn --layers 0-5`) and in a fairseq yaml.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch

MaskSet = Dict[str, torch.Tensor]
"""Model-relative weight name -> bool tensor of the weight's shape; True means the weight is kept."""

KIND_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "out": "self_attn.out_proj",
    "fc1": "fc1",
    "fc2": "fc2",
}
"""Module kind -> its path inside a wav2vec2 `TransformerSentenceEncoderLayer`, in canonical order."""

KINDS = tuple(KIND_MODULES)
KIND_GROUPS = {"attn": ("q", "k", "v", "out"), "ffn": ("fc1", "fc2"), "all": KINDS}

_LAYERS_PART = "encoder.layers."
_WEIGHT_NAME = re.compile(
    r"encoder\.layers\.(\d+)\.(self_attn\.q_proj|self_attn\.k_proj|self_attn\.v_proj|"
    r"self_attn\.out_proj|fc1|fc2)\.weight"
)
_KIND_OF_MODULE = {module: kind for kind, module in KIND_MODULES.items()}
_PARAMETRIZED_WEIGHT = ".parametrizations.weight.original"


def weight_name(layer: int, kind: str) -> str:
    """The model-relative name of one prunable matrix, e.g. (3, 'fc1') -> encoder.layers.3.fc1.weight."""
    return f"{_LAYERS_PART}{layer}.{KIND_MODULES[kind]}.weight"


def encoder_weight_shapes(layers: int, width: int, ffn: int) -> Dict[str, Tuple[int, int]]:
    """Name -> shape of every prunable matrix of a wav2vec2 encoder of this size, without building
    it, so that masks of a large model (XLS-R 300M: 24, 1024, 4096) can be made and measured alone."""
    square = (width, width)
    by_kind = {"q": square, "k": square, "v": square, "out": square, "fc1": (ffn, width), "fc2": (width, ffn)}
    return {weight_name(layer, kind): by_kind[kind] for layer in range(layers) for kind in KINDS}


def parse_weight_name(name: str) -> Optional[Tuple[int, str]]:
    """(layer, kind) of a model-relative prunable weight name, or None for any other name."""
    match = _WEIGHT_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), _KIND_OF_MODULE[match.group(2)]


class TargetError(ValueError):
    """A bad targets or layers text: `key` names the option or config key it came from (the
    message starts with it), `reason` says what is wrong, so a caller can name its own key."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def parse_kinds(text: str, key: str = "targets") -> Tuple[str, ...]:
    """'ffn' / 'attn,fc1' / 'q,v' / 'all' -> kinds in canonical order (q, k, v, out, fc1, fc2);
    errors start with `key`, the option or config key the text came from."""
    chosen = set()
    for item in (part.strip() for part in text.split(",")):
        if item in KIND_GROUPS:
            chosen.update(KIND_GROUPS[item])
        elif item in KIND_MODULES:
            chosen.add(item)
        else:
            known = ", ".join(list(KIND_GROUPS) + list(KINDS))
            raise TargetError(key, f"unknown module kind {item!r} (known: {known})")
    return tuple(kind for kind in KINDS if kind in chosen)


def parse_layers(text: str, key: str = "layers") -> Optional[Tuple[int, ...]]:
    """'all' -> None (every layer); '0-5' / '0,3,5' / '0-3,8-11' -> sorted layer indices; errors
    start with `key`."""
    if text.strip() == "all":
        return None
    chosen = set()
    for item in (part.strip() for part in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if match is None:
            raise TargetError(key, f"cannot read {item!r}; use 'all', '0-5', '0,3,5' or '0-3,8-11'")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise TargetError(key, f"range {item!r} runs backwards")
        chosen.update(range(first, last + 1))
    return tuple(sorted(chosen))


def format_layers(layers: Optional[Tuple[int, ...]]) -> str:
    """Inverse of parse_layers, with runs written as ranges: (0, 1, 2, 5) -> '0-2,5'."""
    if layers is None:
        return "all"
    runs = []
    for layer in layers:
        if runs and runs[-1][1] == layer - 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass(frozen=True)
class TargetSelection:
    """Module kinds x encoder layers to prune; `layers=None` means every layer of the model."""

    kinds: Tuple[str, ...] = KINDS
    layers: Optional[Tuple[int, ...]] = None
    layers_key: str = field(default="layers", compare=False)
    """The option or config key the layers came from, named by errors."""

    @classmethod
    def parse(cls, targets: str = "all", layers: str = "all", keys: Tuple[str, str] = ("targets", "layers")
              ) -> "TargetSelection":
        """The selection of a targets and a layers text; `keys`: the options or config keys they
        came from, which errors start with."""
        return cls(parse_kinds(targets, keys[0]), parse_layers(layers, keys[1]), keys[1])

    def targets_text(self) -> str:
        return ",".join(self.kinds)

    def layers_text(self) -> str:
        return format_layers(self.layers)

    def names(self, num_layers: int) -> Tuple[str, ...]:
        """Selected weight names for a model with `num_layers` encoder layers, layer-major order."""
        layers = range(num_layers) if self.layers is None else self.layers
        beyond = [layer for layer in layers if layer >= num_layers]
        if beyond:
            raise TargetError(self.layers_key,
                              f"layer {beyond[0]} is selected but the model has {num_layers} encoder layers")
        return tuple(weight_name(layer, kind) for layer in layers for kind in self.kinds)

    def selects(self, name: str) -> bool:
        """Whether the model-relative weight `name` is of a selected kind and layer, in a model of
        any depth. A name that is no prunable weight counts as selected, so that checking it
        against a model reports it rather than dropping it."""
        parsed = parse_weight_name(name)
        if parsed is None:
            return True
        layer, kind = parsed
        return kind in self.kinds and (self.layers is None or layer in self.layers)


def model_prefix(keys) -> str:
    """The state-dict prefix in front of the wav2vec2 model ('' for a pretrained checkpoint,
    'w2v_encoder.w2v_model.' for a fine-tuned CTC one), found from the encoder layer keys."""
    prefixes = set()
    for key in keys:
        position = key.find(_LAYERS_PART)
        if position == 0 or (position > 0 and key[position - 1] == "."):
            prefixes.add(key[:position])
    if len(prefixes) != 1:
        found = ", ".join(repr(p) for p in sorted(prefixes)) or "none"
        raise ValueError(f"cannot find one wav2vec2 encoder in the state dict (prefixes: {found})")
    return prefixes.pop()


def relative_weight_names(keys, prefix: Optional[str] = None) -> Dict[str, str]:
    """Model-relative prunable weight name -> state-dict key, for plain keys (`...fc1.weight`) and
    parametrized ones (`...fc1.parametrizations.weight.original`); prefix detected when None."""
    keys = list(keys)
    prefix = model_prefix(keys) if prefix is None else prefix
    found = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.endswith(_PARAMETRIZED_WEIGHT):
            name = name[: -len(_PARAMETRIZED_WEIGHT)] + ".weight"
        if parse_weight_name(name) is not None:
            found[name] = key
    return found


def num_encoder_layers(names) -> int:
    """1 + the highest encoder layer index among model-relative weight names (0 if none)."""
    layers = [parsed[0] for parsed in map(parse_weight_name, names) if parsed is not None]
    return max(layers) + 1 if layers else 0


def select_weights(
    state_dict: Mapping[str, torch.Tensor], selection: TargetSelection = TargetSelection()
) -> Dict[str, torch.Tensor]:
    """The selected prunable weights of a plain (unparametrized) state dict of a pretrained or a
    fine-tuned model, keyed by model-relative name in layer-major, canonical-kind order (the order
    that breaks ties between equal scores in global pruning). Tensors are shared, not copied."""
    available = relative_weight_names(state_dict.keys())
    parametrized = [key for key in available.values() if key.endswith(_PARAMETRIZED_WEIGHT)]
    if parametrized:
        raise ValueError(f"state dict holds parametrized weight {parametrized[0]!r}; bake it first")
    wanted = selection.names(num_encoder_layers(available))
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ValueError(f"state dict has no weight for {missing[0]!r}")
    return {name: state_dict[available[name]] for name in wanted}
