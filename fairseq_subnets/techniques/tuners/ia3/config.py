"""IA3 options (Liu et al. 2022, as the S2-LoRA paper compares it)."""
from dataclasses import dataclass

from ....core.targets import KIND_GROUPS, parse_weight_name
from ..base import TunerConfig

INPUT_SCALED_KINDS = KIND_GROUPS["ffn"]
"""Feed-forward matrices get their input scaled (PEFT's rule for feed-forward modules); attention
projections get their output scaled, bias included."""


def scales_input(weight_name: str) -> bool:
    parsed = parse_weight_name(weight_name)
    return parsed is not None and parsed[1] in INPUT_SCALED_KINDS


@dataclass(frozen=True)
class Ia3Config(TunerConfig):
    """One learned vector per target, starting at 1: it scales the outputs of k and v and the
    input of fc2 by default (three vectors per layer, as in the paper)."""

    method = "ia3"
    targets: str = "k,v,fc2"

    def trainable_count(self, shapes) -> int:
        return sum(d_in if scales_input(name) else d_out for name, (d_out, d_in) in shapes.items())
