"""The DoRA weight transform: LoRA's delta gives the direction of each output row, a learned
vector its length.

It acts on the weight, not on the layer's output, so fairseq's fused attention sees it and the
stack's forward pass is the merge. A merge cannot be undone from the merged weight and the
transform's state: the row norms ||W + s B A|| it divided by depend on the backbone W that the
merge replaced (PEFT keeps them in memory between its own merge and unmerge)."""
import torch
from torch import nn

from ....core.transforms import ADAPT, TransformError, WeightTransform, register_transform_kind
from ..base import kaiming_init, rank_and_alpha, required_options, tuner_kind, zero_init


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of every output row (PEFT's norm for nn.Linear)."""
    return torch.linalg.vector_norm(weight, dim=1)


@tuner_kind("dora")
@register_transform_kind
class DoraChange(WeightTransform):
    """m * V / ||V|| with V = W + (alpha / r) B A; A Kaiming-uniform, B zero, m (`magnitude`, one
    per output row) the rows' norms of the weight it is created on."""

    kind = "dora"
    stage = ADAPT
    state_buffers = ("alpha",)

    def __init__(self, down: nn.Parameter, up: nn.Parameter, magnitude: nn.Parameter, alpha: float):
        super().__init__()
        self.lora_A = down
        self.lora_B = up
        self.magnitude = magnitude
        self.register_buffer("alpha", torch.tensor(float(alpha)))  # state: a bare state dict bakes

    @classmethod
    def create(cls, weight: torch.Tensor, r: int, alpha: float) -> "DoraChange":
        """On `weight` (the weight the transform will receive): the change starts at exactly 0."""
        d_out, d_in = weight.shape
        magnitude = nn.Parameter(row_norms(weight.detach().float()))
        return cls(kaiming_init((r, d_in)), zero_init((d_out, r)), magnitude, alpha)

    def rank(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = self.alpha / self.rank()
        direction = weight + (scale * (self.lora_B @ self.lora_A)).to(weight.dtype)
        norms = row_norms(direction.detach())
        # A row that is zero throughout (all of it pruned by a fixed mask, B still zero) stays
        # zero; dividing by its norm of 0 would make it, and every gradient, NaN.
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        return (self.magnitude.to(weight.dtype) / norms)[:, None] * direction

    def unmerge(self, weight: torch.Tensor) -> torch.Tensor:
        raise TransformError(f"{self.kind}: a merged weight cannot be taken back to the backbone: the merge divided "
                             "each row by ||W + s B A||, which only the backbone W it replaced gives; apply the "
                             "adapter file to the backbone instead")

    def weight_shape(self):
        return (self.lora_B.shape[0], self.lora_A.shape[1])

    @classmethod
    def rank_of_state(cls, tensors) -> int:
        """The rank in use of a transform stored as `tensors` (its state entries)."""
        return tensors["lora_A"].shape[0]

    def options(self):
        return rank_and_alpha(self.lora_A, self.alpha)

    @classmethod
    def options_from_state(cls, tensors):
        return rank_and_alpha(tensors["lora_A"], tensors["alpha"])

    @classmethod
    def placeholder(cls, shape, options):
        """Zeros of the right shapes: the state that follows fills every tensor."""
        d_out, d_in = shape
        r, alpha = required_options(cls.kind, options, ("r", "alpha"))
        return cls(zero_init((int(r), d_in)), zero_init((d_out, int(r))), zero_init((d_out,)), float(alpha))
