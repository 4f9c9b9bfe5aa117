"""The AdaLoRA weight transform: an SVD-form delta whose singular values the budget masks."""
from typing import Dict

import torch

from ....core.transforms import register_transform_kind
from ..base import AdditiveDelta, normal_init, required_options, tuner_kind, zero_init

ORTHOGONALITY_TERM = "adalora_orthogonality"
FACTOR_NAMES = ("lora_A", "lora_E", "lora_B")
"""Q (r x d_in), lambda (r), P (d_out x r): PEFT's names, so its importance rules read the same."""
IMPORTANCE_AVERAGES = ("sensitivity", "uncertainty")


@tuner_kind("adalora")
@register_transform_kind
class SvdDelta(AdditiveDelta):
    """W + (alpha / r) P diag(lambda) Q. The importance averages of each factor are buffers, so
    a checkpoint holds them and a resumed run masks as the uninterrupted one would; `kept` records
    the triplets the last masking kept (all, before any)."""

    kind = "adalora"
    state_buffers = ("alpha", "kept") + tuple(f"{factor}_{average}" for factor in FACTOR_NAMES
                                              for average in IMPORTANCE_AVERAGES)

    def __init__(self, shape, r: int, alpha: float, orthogonality_weight: float):
        super().__init__()
        d_out, d_in = shape
        self.lora_A = normal_init((r, d_in))
        self.lora_E = zero_init((r,))
        self.lora_B = normal_init((d_out, r))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("kept", torch.ones(r, dtype=torch.bool))
        for factor in FACTOR_NAMES:
            for average in IMPORTANCE_AVERAGES:
                self.register_buffer(f"{factor}_{average}", torch.zeros_like(getattr(self, factor)))
        self.orthogonality_weight = float(orthogonality_weight)

    def delta(self) -> torch.Tensor:
        return self.alpha / self.lora_E.numel() * (self.lora_B @ (self.lora_A * self.lora_E[:, None]))

    def weight_shape(self):
        return (self.lora_B.shape[0], self.lora_A.shape[1])

    def rank(self) -> int:
        """Triplets the budget keeps."""
        return self.rank_of_state({"kept": self.kept})

    @classmethod
    def rank_of_state(cls, tensors) -> int:
        return int(tensors["kept"].sum())

    def update_importance(self, beta1: float, beta2: float) -> None:
        """One smoothing step of sensitivity and uncertainty from the factors' current gradients."""
        with torch.no_grad():
            for factor in FACTOR_NAMES:
                parameter = getattr(self, factor)
                if parameter.grad is None:
                    continue
                importance = (parameter * parameter.grad).abs()
                sensitivity = getattr(self, f"{factor}_sensitivity")
                sensitivity.mul_(beta1).add_(importance, alpha=1 - beta1)
                getattr(self, f"{factor}_uncertainty").mul_(beta2).add_((importance - sensitivity).abs(),
                                                                        alpha=1 - beta2)

    def triplet_scores(self) -> torch.Tensor:
        """Score of each of the r triplets (lambda_k, Q[k, :], P[:, k])."""
        def score(factor):
            return getattr(self, f"{factor}_sensitivity") * getattr(self, f"{factor}_uncertainty")
        return score("lora_E") + score("lora_A").mean(dim=1) + score("lora_B").mean(dim=0)

    def named_selection(self):
        return {"triplets": self.kept}

    def keep(self, kept: torch.Tensor) -> None:
        """Zeroes the singular values of the triplets not kept."""
        with torch.no_grad():
            self.kept.copy_(kept)
            self.lora_E.masked_fill_(~kept, 0.0)

    def regularisation_term_names(self):
        return (ORTHOGONALITY_TERM,) if self.orthogonality_weight else ()

    def regularisation_term(self, name: str) -> torch.Tensor:
        identity = torch.eye(self.lora_E.numel(), dtype=self.lora_A.dtype, device=self.lora_A.device)
        deviation = ((self.lora_A @ self.lora_A.T - identity).norm()
                     + (self.lora_B.T @ self.lora_B - identity).norm())
        return self.orthogonality_weight * deviation

    def options(self) -> Dict[str, object]:
        return {"r": self.lora_E.numel(), "alpha": float(self.alpha),
                "orthogonality_weight": self.orthogonality_weight}

    @classmethod
    def options_from_state(cls, tensors):
        """The state's rank and alpha; no orthogonality weight, since a bare state dict is only
        baked or unmerged, where the regulariser plays no part."""
        return {"r": tensors["lora_E"].numel(), "alpha": float(tensors["alpha"]), "orthogonality_weight": 0.0}

    @classmethod
    def placeholder(cls, shape, options):
        r, alpha, orthogonality_weight = required_options(cls.kind, options, ("r", "alpha", "orthogonality_weight"))
        return cls(shape, int(r), float(alpha), float(orthogonality_weight))
