"""The LoRA and alpha-LoRA weight transforms: a low-rank delta added to the weight."""
import torch
from torch import nn

from ...transforms import register_transform_kind
from ..base import AdditiveDelta, kaiming_init, normal_init, tuner_kind, zero_init


class _LowRankDelta(AdditiveDelta):
    """W + scale * B A with B (d_out x r) and A (r x d_in); subclasses say what `scale` is."""

    def __init__(self, down: nn.Parameter, up: nn.Parameter):
        super().__init__()
        self.lora_A = down
        self.lora_B = up

    def scale(self) -> torch.Tensor:
        raise NotImplementedError

    def delta(self) -> torch.Tensor:
        return self.scale() * (self.lora_B @ self.lora_A)

    def weight_shape(self):
        return (self.lora_B.shape[0], self.lora_A.shape[1])

    def rank(self) -> int:
        return self.lora_A.shape[0]

    @classmethod
    def rank_of_state(cls, tensors) -> int:
        """The rank in use of a transform stored as `tensors` (its state entries)."""
        return tensors["lora_A"].shape[0]

    @classmethod
    def options_from_state(cls, tensors):
        return {"r": tensors["lora_A"].shape[0]}


@tuner_kind("lora")
@register_transform_kind
class LoraDelta(_LowRankDelta):
    """(alpha / r) B A; A Kaiming-uniform, B zero (so the delta starts at exactly 0)."""

    kind = "lora"

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
        return {"r": self.rank(), "alpha": float(self.alpha)}

    @classmethod
    def placeholder(cls, shape, options):
        return cls.create(shape, int(options.get("r", 1)), float(options.get("alpha", 1.0)))


@tuner_kind("alpha_lora")
@register_transform_kind
class AlphaLoraDelta(_LowRankDelta):
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
    def placeholder(cls, shape, options):
        return cls.create(shape, int(options.get("r", 1)))
