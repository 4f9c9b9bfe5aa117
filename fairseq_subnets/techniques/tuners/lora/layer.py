"""The LoRA weight transform: a low-rank delta added to the weight."""
import torch
from torch import nn

from ....core.transforms import register_transform_kind
from ..base import LowRankDelta, kaiming_init, rank_and_alpha, required_options, tuner_kind, zero_init


@tuner_kind("lora")
@register_transform_kind
class LoraDelta(LowRankDelta):
    """(alpha / r) B A; A Kaiming-uniform, B zero (so the delta starts at exactly 0)."""

    kind = "lora"
    state_buffers = ("alpha",)

    def __init__(self, down: nn.Parameter, up: nn.Parameter, alpha: float):
        super().__init__(down, up)
        self.register_buffer("alpha", torch.tensor(float(alpha)))  # state: a bare state dict bakes

    @classmethod
    def create(cls, shape, r: int, alpha: float) -> "LoraDelta":
        d_out, d_in = shape
        return cls(kaiming_init((r, d_in)), zero_init((d_out, r)), alpha)

    def scale(self) -> torch.Tensor:
        return self.alpha / self.rank()

    def options(self):
        return rank_and_alpha(self.lora_A, self.alpha)

    @classmethod
    def options_from_state(cls, tensors):
        return rank_and_alpha(tensors["lora_A"], tensors["alpha"])

    @classmethod
    def placeholder(cls, shape, options):
        r, alpha = required_options(cls.kind, options, ("r", "alpha"))
        return cls.create(shape, int(r), float(alpha))
