"""The IA3 weight transforms: a learned vector scaling a projection's output or its input,
written as a scaling of the weight's rows (and bias) or columns, so fused attention applies it."""
import torch
from torch import nn

from ....core.transforms import ADAPT, TransformError, WeightTransform, register_transform_kind
from ..base import tuner_kind


class _VectorScale(WeightTransform):
    stage = ADAPT

    def __init__(self, vector: nn.Parameter):
        super().__init__()
        self.ia3_l = vector

    @classmethod
    def create(cls, shape) -> "_VectorScale":
        return cls(nn.Parameter(torch.ones(cls.vector_length(shape))))

    @staticmethod
    def vector_length(shape) -> int:
        raise NotImplementedError

    @classmethod
    def placeholder(cls, shape, options):
        return cls.create(shape)

    def divisor(self, dtype) -> torch.Tensor:
        """The scaling vector, refused if any entry is 0 (that scaling cannot be undone)."""
        if bool((self.ia3_l == 0).any()):
            raise TransformError(f"{self.kind}: a scale of 0 cannot be undone")
        return self.ia3_l.to(dtype)


@tuner_kind("ia3")
@register_transform_kind
class Ia3OutputScale(_VectorScale):
    """y = l * (W x + b): rows of W and the bias scaled by l."""

    kind = "ia3_out"
    changes_bias = True

    @staticmethod
    def vector_length(shape) -> int:
        return shape[0]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.ia3_l.to(weight.dtype)[:, None]

    def adapt_bias(self, bias, base_weight):
        return bias * self.ia3_l.to(bias.dtype)

    def unmerge(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.divisor(weight.dtype)[:, None]

    def unmerge_bias(self, bias, base_weight):
        return bias / self.divisor(bias.dtype)


@tuner_kind("ia3")
@register_transform_kind
class Ia3InputScale(_VectorScale):
    """y = W (l * x) + b: columns of W scaled by l."""

    kind = "ia3_in"

    @staticmethod
    def vector_length(shape) -> int:
        return shape[1]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.ia3_l.to(weight.dtype)[None, :]

    def unmerge(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.divisor(weight.dtype)[None, :]
