"""GLoRA options (Chavan et al. 2023, row of the S2-LoRA paper's Table 2)."""
from dataclasses import dataclass

from ..base import TunerConfig, option


@dataclass(frozen=True)
class GloraConfig(TunerConfig):
    """W' = W + W * A + B and b' = b + b * D + E + W C, in the form HF PEFT implements (the paper
    used PEFT): `*` is elementwise, A and B are rank-r products (d_out x r)(r x d_in), C is a
    rank-r column (d_in x r)(r x 1), D and E are scalars. Everything that multiplies starts at 0,
    so training starts from the backbone. Defaults: every matrix, r = 8."""

    method = "glora"
    r: int = option(8, "rank of the factor pairs of A, B and C", rank=True)

    def trainable_count(self, shapes) -> int:
        return sum(2 * self.r * (d_out + d_in) + self.r * (d_in + 1) + 2 for d_out, d_in in shapes.values())
