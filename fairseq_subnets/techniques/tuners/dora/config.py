"""DoRA options (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"; HF PEFT's
`LoraConfig(use_dora=True)`)."""
from dataclasses import dataclass

from ..base import TunerConfig, option


@dataclass(frozen=True)
class DoraConfig(TunerConfig):
    """W' = m * V / ||V|| with V = W + (alpha / r) B A, the norm taken over each output row and
    treated as a constant in the backward pass (the paper's Sec. 4.3): the direction V is LoRA's,
    the length m of every row is learned. m starts at the rows' norms of W and B at zero, so
    training starts from the backbone. Defaults are LoRA's in the S2-LoRA comparison: q and v,
    r = 8 (alpha = r: scale 1)."""

    method = "dora"
    targets: str = "q,v"
    r: int = option(8, "rank of the low-rank factors giving each row's direction", rank=True)
    alpha: float = option(8.0, "the low-rank delta is scaled by alpha / r before the rows are normalised")

    def check(self) -> None:
        super().check()
        if not self.alpha > 0:
            raise self.error("alpha", f"must be > 0 (got {self.alpha!r})")

    def trainable_count(self, shapes) -> int:
        """LoRA's factors and one magnitude per output row."""
        return sum(self.r * (d_out + d_in) + d_out for d_out, d_in in shapes.values())
