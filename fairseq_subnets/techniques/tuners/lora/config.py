"""LoRA and alpha-LoRA options (Hu et al. 2022; Liu et al. 2023 Sec. 4.2)."""
from dataclasses import dataclass

from ..base import TunerConfig, TunerError


@dataclass(frozen=True)
class LoraConfig(TunerConfig):
    """W + (alpha / r) B A on the targets; B starts at zero, so training starts from the backbone.
    Defaults are the S2-LoRA paper's comparison: q and v, r = 8 (alpha = r: scale 1)."""

    method = "lora"
    targets: str = "q,v"
    r: int = 8
    alpha: float = 8.0

    def check(self) -> None:
        super().check()
        self.check_rank()
        if not self.alpha > 0:
            raise TunerError(f"{self.key('alpha')}: must be > 0 (got {self.alpha!r})")

    def trainable_count(self, shapes) -> int:
        return sum(self.r * (d_out + d_in) for d_out, d_in in shapes.values())


@dataclass(frozen=True)
class AlphaLoraConfig(TunerConfig):
    """W + a B A with one learnable scalar a per matrix, starting at 0, and A, B drawn from
    N(0, 0.02^2): the rank coefficient the S2-LoRA paper found to be what makes AdaLoRA better."""

    method = "alpha_lora"
    targets: str = "q,v"
    r: int = 8

    def check(self) -> None:
        super().check()
        self.check_rank()

    def trainable_count(self, shapes) -> int:
        return sum(self.r * (d_out + d_in) + 1 for d_out, d_in in shapes.values())
