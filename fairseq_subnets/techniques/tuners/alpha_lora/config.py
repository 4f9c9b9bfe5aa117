"""alpha-LoRA options (Liu et al. 2023 Sec. 4.2)."""
from dataclasses import dataclass

from ..base import TunerConfig, option


@dataclass(frozen=True)
class AlphaLoraConfig(TunerConfig):
    """W + a B A with one learnable scalar a per matrix, starting at 0, and A, B drawn from
    N(0, 0.02^2): the rank coefficient the S2-LoRA paper found to be what makes AdaLoRA better."""

    method = "alpha_lora"
    targets: str = "q,v"
    r: int = option(8, "rank of the low-rank factors", rank=True)

    def trainable_count(self, shapes) -> int:
        return sum(self.r * (d_out + d_in) + 1 for d_out, d_in in shapes.values())
