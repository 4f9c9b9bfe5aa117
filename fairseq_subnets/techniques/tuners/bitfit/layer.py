"""The BitFit transform: a learned change of the bias, the weight untouched.

Why a change and not the bias itself: the stored bias stays the backbone's (bit-identical after
training, so the same backbone serves every tuner), the change is what an adapter file holds,
and merging is baking, as for every other tuner. The gradient is the bias's own, so Adam's
updates are the same; weight decay pulls towards the pretrained bias rather than towards 0.
"""
import torch

from ....core.transforms import ADAPT, WeightTransform, register_transform_kind
from ..base import tuner_kind, zero_init


@tuner_kind("bitfit")
@register_transform_kind
class BiasChange(WeightTransform):
    kind = "bitfit"
    stage = ADAPT
    changes_bias = True

    def __init__(self, length: int):
        super().__init__()
        self.bias_delta = zero_init((length,))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def adapt_bias(self, bias, base_weight):
        return bias + self.bias_delta.to(bias.dtype)

    def unmerge(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def unmerge_bias(self, bias, base_weight):
        return bias - self.bias_delta.to(bias.dtype)

    @classmethod
    def placeholder(cls, shape, options):
        return cls(shape[0])
