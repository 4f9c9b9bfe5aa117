"""The VeRA weight transform: two trained vectors scaling frozen random bases that every adapted
matrix shares.

The bases are buffers of each transform, one tensor for all of them (`tie_shared_parameters`), so
a checkpoint or an adapter file holds them (once: shared storage, or an alias) and rebuilds the
model alone, whatever seed or generator made them (PEFT's `save_projection=True`)."""
import math
from typing import Tuple

import torch
from torch import nn

from ....core.transforms import register_transform_kind
from ..base import AdditiveDelta, required_options, tuner_kind, zero_init


def random_bases(r: int, d_out: int, d_in: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(A of r x d_in, B of d_out x r), each Kaiming-uniform over its fan-in (gain sqrt 2, so
    U(-sqrt(6 / fan_in), sqrt(6 / fan_in))), A drawn first, from one CPU generator seeded with
    `seed`: the draw PEFT makes, so a seed gives PEFT's bases."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(rows: int, columns: int) -> torch.Tensor:
        bound = math.sqrt(3.0) * (math.sqrt(2.0) / math.sqrt(columns))
        return torch.empty(rows, columns).uniform_(-bound, bound, generator=generator)

    return draw(r, d_in), draw(d_out, r)


@tuner_kind("vera")
@register_transform_kind
class VeraDelta(AdditiveDelta):
    """W + diag(b) B[:d_out] diag(d) A[:, :d_in]: `lambda_b` (d_out) starts at 0, `lambda_d` (r)
    at d_initial, so the delta starts at exactly 0; `vera_A` and `vera_B` are the shared bases."""

    kind = "vera"
    shared_tensor_names = ("vera_A", "vera_B")
    state_buffers = ("vera_A", "vera_B")

    def __init__(self, shape, bases: Tuple[torch.Tensor, torch.Tensor], d_initial: float):
        super().__init__()
        d_out, d_in = shape
        bases_A, bases_B = bases
        self.register_buffer("vera_A", bases_A)
        self.register_buffer("vera_B", bases_B)
        self.lambda_b = zero_init((d_out,))
        self.lambda_d = nn.Parameter(torch.full((bases_A.shape[0],), float(d_initial)))
        self.shape = (d_out, d_in)

    def delta(self) -> torch.Tensor:
        d_out, d_in = self.shape
        return (self.lambda_b[:, None] * self.vera_B[:d_out]) @ (self.lambda_d[:, None] * self.vera_A[:, :d_in])

    def weight_shape(self):
        return self.shape

    def sharing_key(self):
        return (tuple(self.vera_A.shape), tuple(self.vera_B.shape))

    def options(self):
        return {"r": self.vera_A.shape[0], "bases_out": self.vera_B.shape[0], "bases_in": self.vera_A.shape[1]}

    @classmethod
    def options_from_state(cls, tensors):
        return {"r": tensors["vera_A"].shape[0], "bases_out": tensors["vera_B"].shape[0],
                "bases_in": tensors["vera_A"].shape[1]}

    @classmethod
    def placeholder(cls, shape, options):
        """Zero bases of the recorded size (the state that follows fills them; a model rebuilt
        from its plan then ties them into one tensor)."""
        r, bases_out, bases_in = (int(value) for value in required_options(cls.kind, options,
                                                                              ("r", "bases_out", "bases_in")))
        return cls(shape, (torch.zeros(r, bases_in), torch.zeros(bases_out, r)), 0.0)
