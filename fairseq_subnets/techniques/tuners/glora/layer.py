"""The GLoRA weight transform: an elementwise low-rank scaling and a low-rank delta of the
weight, and a bias change that couples the bias to the frozen weight."""
import torch

from ....core.transforms import ADAPT, TransformError, WeightTransform, register_transform_kind
from ..base import kaiming_init, required_options, tuner_kind, zero_init


@tuner_kind("glora")
@register_transform_kind
class GloraChange(WeightTransform):
    """Each low-rank factor pair starts with one factor at zero (the other Kaiming-uniform), and
    D, E start at zero: the change is exactly 0 at the start."""

    kind = "glora"
    stage = ADAPT
    changes_bias = True
    bias_reads_weight = True

    def __init__(self, shape, r: int):
        super().__init__()
        d_out, d_in = shape
        self.scale_up, self.scale_down = zero_init((d_out, r)), kaiming_init((r, d_in))  # A
        self.delta_up, self.delta_down = zero_init((d_out, r)), kaiming_init((r, d_in))  # B
        self.coupling_up, self.coupling_down = zero_init((d_in, r)), kaiming_init((r, 1))  # C
        self.bias_scale = zero_init(())  # D
        self.bias_shift = zero_init(())  # E

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = (self.scale_up @ self.scale_down).to(weight.dtype)
        return weight + weight * scale + (self.delta_up @ self.delta_down).to(weight.dtype)

    def adapt_bias(self, bias, base_weight):
        return bias + bias * self.bias_scale + self.bias_shift + self.coupling(base_weight)

    def coupling(self, base_weight: torch.Tensor) -> torch.Tensor:
        return (base_weight @ (self.coupling_up @ self.coupling_down).to(base_weight.dtype)).squeeze(-1)

    def unmerge(self, weight: torch.Tensor) -> torch.Tensor:
        """W = (W' - B) / (1 + A), elementwise; refused where 1 + A is 0."""
        factor = 1 + (self.scale_up @ self.scale_down).to(weight.dtype)
        if bool((factor == 0).any()):
            raise TransformError(f"{self.kind}: 1 + A is 0 somewhere; that weight cannot be taken back")
        return (weight - (self.delta_up @ self.delta_down).to(weight.dtype)) / factor

    def unmerge_bias(self, bias, base_weight):
        factor = 1 + self.bias_scale
        if bool(factor == 0):
            raise TransformError(f"{self.kind}: 1 + D is 0; the bias cannot be taken back")
        return (bias - self.bias_shift - self.coupling(base_weight)) / factor

    def weight_shape(self):
        return (self.scale_up.shape[0], self.scale_down.shape[1])

    def rank(self) -> int:
        return self.scale_down.shape[0]

    def options(self):
        return {"r": self.rank()}

    @classmethod
    def placeholder(cls, shape, options):
        r, = required_options(cls.kind, options, ("r",))
        return cls(shape, int(r))

    @classmethod
    def options_from_state(cls, tensors):
        return {"r": tensors["scale_down"].shape[0]}
