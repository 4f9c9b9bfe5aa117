"""VeRA options (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"; HF PEFT's
`VeraConfig`)."""
import math
from dataclasses import dataclass
from typing import Mapping, Tuple

from ..base import TunerConfig, option

SEED_LIMIT = 2 ** 63
"""torch.Generator.manual_seed takes seeds below this."""


@dataclass(frozen=True)
class VeraConfig(TunerConfig):
    """Delta W = diag(b) B diag(d) A on every target. A (r x d_in) and B (d_out x r) are frozen,
    random and shared by every adapted matrix: one pair drawn at the largest d_in and d_out among
    the targets from a generator seeded with `projection_seed` (PEFT's projection_prng_key), each
    matrix using its leading rows and columns. Only b (one per output row, starting at 0) and d
    (one per rank, starting at `d_initial`) train. Defaults: PEFT's r = 256 and d_initial = 0.1,
    on q and v as the paper adapts them."""

    method = "vera"
    targets: str = "q,v"
    r: int = option(256, "rank of the shared random bases (VeRA's r may exceed a matrix's sides: only the "
                         "vector d grows with it)")
    d_initial: float = option(0.1, "starting value of every entry of d, the trained vector between the bases")
    projection_seed: int = option(0, "seed of the generator drawing the shared random bases (PEFT's "
                                     "projection_prng_key)")

    def check(self) -> None:
        super().check()
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise self.error("r", f"a rank is an integer >= 1 (got {self.r!r})")
        if not (isinstance(self.d_initial, (int, float)) and math.isfinite(self.d_initial)) or self.d_initial == 0:
            raise self.error("d_initial", f"a finite number other than 0 (got {self.d_initial!r}); with d and b both "
                                          "starting at 0 neither would get a gradient")
        seed = self.projection_seed
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
            raise self.error("projection_seed", f"an integer from 0 to 2**63 - 1 (got {seed!r})")

    def trainable_count(self, shapes) -> int:
        return sum(d_out + self.r for d_out, _ in shapes.values())


def bases_shape(shapes: Mapping[str, Tuple[int, int]]) -> Tuple[int, int]:
    """(largest d_out, largest d_in) over the target matrices `shapes`: what the shared bases span."""
    return max(d_out for d_out, _ in shapes.values()), max(d_in for _, d_in in shapes.values())
