"""BitFit options (Ben Zaken et al. 2022, as the S2-LoRA paper compares it)."""
from dataclasses import dataclass

from ..base import TunerConfig


@dataclass(frozen=True)
class BitfitConfig(TunerConfig):
    """Trains the biases of the target matrices (default: every projection of every encoder
    layer), as a learned change added to each bias."""

    method = "bitfit"

    def trainable_count(self, shapes) -> int:
        return sum(d_out for d_out, _ in shapes.values())
