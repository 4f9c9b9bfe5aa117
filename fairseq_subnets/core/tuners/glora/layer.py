"""The GLoRA weight transform: an elementwise low-rank scaling and a low-rank delta of the
weight, and a bias change that couples the bias to the frozen weight."""
import torch

from ...transforms import ADAPT, WeightTransform, register_transform_kind
from ..base import kaiming_init, tuner_kind, zero_init


@tuner_kind("glora")
@register_transform_kind
class GloraChange(WeightTransform):
    """Each low-rank factor pair starts with one factor at zero (the other Kaiming-uniform), and
    D, E start at zero: the change is exactly 0 at the start."""

    kind = "glora"
    stage = ADAPT
    changes_bias = True

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
        coupling = base_weight @ (self.coupling_up @ self.coupling_down).to(base_weight.dtype)
        return bias + bias * self.bias_scale + self.bias_shift + coupling.squeeze(-1)

    def weight_shape(self):
        return (self.scale_up.shape[0], self.scale_down.shape[1])

    def rank(self) -> int:
        return self.scale_down.shape[0]

    def options(self):
        return {"r": self.rank()}

    @classmethod
    def placeholder(cls, shape, options):
        return cls(shape, int(options.get("r", 1)))

    @classmethod
    def options_from_state(cls, tensors):
        return {"r": tensors["scale_down"].shape[0]}
