"""LoRA options (Hu et al. 2022)."""
from dataclasses import dataclass

from ..base import TunerConfig, option


@dataclass(frozen=True)
class LoraConfig(TunerConfig):
    """W + (alpha / r) B A on the targets; B starts at zero, so training starts from the backbone.
    Defaults are the S2-LoRA paper's comparison: q and v, r = 8 (alpha = r: scale 1)."""

    method = "lora"
    targets: str = "q,v"
    r: int = option(8, "rank of the low-rank factors", rank=True)
    alpha: float = option(8.0, "the delta is scaled by alpha / r")

    def check(self) -> None:
        super().check()
        if not self.alpha > 0:
            raise self.error("alpha", f"must be > 0 (got {self.alpha!r})")

    def trainable_count(self, shapes) -> int:
        return sum(self.r * (d_out + d_in) for d_out, d_in in shapes.values())
