"""The alpha-LoRA weight transform: a low-rank delta scaled by one learned coefficient."""
import torch
from torch import nn

from ....core.transforms import register_transform_kind
from ..base import LowRankDelta, normal_init, required_options, tuner_kind, zero_init


@tuner_kind("alpha_lora")
@register_transform_kind
class AlphaLoraDelta(LowRankDelta):
    """a B A; a is a learned scalar starting at 0, A and B normal (std 0.02)."""

    kind = "alpha_lora"

    def __init__(self, down: nn.Parameter, up: nn.Parameter, coefficient: nn.Parameter):
        super().__init__(down, up)
        self.coefficient = coefficient

    @classmethod
    def create(cls, shape, r: int) -> "AlphaLoraDelta":
        d_out, d_in = shape
        return cls(normal_init((r, d_in)), normal_init((d_out, r)), zero_init(()))

    def scale(self) -> torch.Tensor:
        return self.coefficient

    @classmethod
    def rank_of_state(cls, tensors) -> int:
        """r, or 0 while the coefficient is exactly 0 (the delta is then 0)."""
        return 0 if float(tensors["coefficient"]) == 0 else tensors["lora_A"].shape[0]

    def options(self):
        return {"r": self.rank()}

    @classmethod
    def options_from_state(cls, tensors):
        return {"r": tensors["lora_A"].shape[0]}

    @classmethod
    def placeholder(cls, shape, options):
        r, = required_options(cls.kind, options, ("r",))
        return cls.create(shape, int(r))
