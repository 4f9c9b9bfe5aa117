"""The S2-LoRA weight transform: a per-matrix rank-coefficient vector over factors shared by its
module group."""
from typing import Dict

import torch

from ....core.transforms import register_transform_kind
from ..base import AdditiveDelta, normal_init, required_options, tuner_kind, zero_init
from .config import PRUNED_RANK_THRESHOLD

SPARSITY_TERM, FACTORS_TERM = "s2lora_sparsity", "s2lora_factors"


@tuner_kind("s2lora")
@register_transform_kind
class SharedLowRankDelta(AdditiveDelta):
    """W + B diag(s) A. `shared_A` and `shared_B` are the group's tensors (the same Parameter in
    every member: `tie_shared_parameters`); `coefficients` is this matrix's own s.

    Each member adds sparsity_weight / N * ||s||_1 (N members in all), so the terms sum to the
    paper's mean; the group's first member (`owner`) adds the factor term of its pair once."""

    kind = "s2lora"
    shared_tensor_names = ("shared_A", "shared_B")

    def __init__(self, shape, r: int, group: str, sparsity_weight: float, factor_weight: float, owner: bool):
        super().__init__()
        d_out, d_in = shape
        self.shared_A = normal_init((r, d_in))
        self.shared_B = normal_init((d_out, r))
        self.coefficients = zero_init((r,))
        self.group = group
        self.sparsity_weight = float(sparsity_weight)
        self.factor_weight = float(factor_weight)
        self.owner = bool(owner)

    def share(self, owner: "SharedLowRankDelta") -> None:
        self.shared_A, self.shared_B = owner.shared_A, owner.shared_B

    def delta(self) -> torch.Tensor:
        return self.shared_B @ (self.coefficients[:, None] * self.shared_A)

    def weight_shape(self):
        return (self.shared_B.shape[0], self.shared_A.shape[1])

    def rank(self) -> int:
        """Ranks in use: coefficients with |s| >= 1e-4."""
        return self.rank_of_state({"coefficients": self.coefficients.detach()})

    @classmethod
    def rank_of_state(cls, tensors) -> int:
        return int((tensors["coefficients"].abs() >= PRUNED_RANK_THRESHOLD).sum())

    def sharing_key(self):
        return (self.group, self.weight_shape())

    def regularisation_term_names(self):
        return (SPARSITY_TERM, FACTORS_TERM) if self.owner else (SPARSITY_TERM,)

    def regularisation_term(self, name: str) -> torch.Tensor:
        if name == SPARSITY_TERM:
            return self.sparsity_weight * self.coefficients.abs().sum()
        r = self.coefficients.numel()
        norms = self.shared_B.norm(dim=0).sum() + self.shared_A.norm(dim=1).sum()
        return self.factor_weight / (2 * r) * norms

    def options(self) -> Dict[str, object]:
        return {"r": self.coefficients.numel(), "group": self.group, "sparsity_weight": self.sparsity_weight,
                "factor_weight": self.factor_weight, "owner": self.owner}

    @classmethod
    def options_from_state(cls, tensors):
        """The state's rank; no group and no loss weights, since a bare state dict is only baked or
        unmerged, where sharing and the regulariser play no part."""
        return {"r": tensors["coefficients"].numel(), "group": "", "sparsity_weight": 0.0, "factor_weight": 0.0,
                "owner": False}

    @classmethod
    def placeholder(cls, shape, options):
        r, group, sparsity_weight, factor_weight, owner = required_options(
            cls.kind, options, ("r", "group", "sparsity_weight", "factor_weight", "owner"))
        return cls(shape, int(r), str(group), float(sparsity_weight), float(factor_weight), bool(owner))
