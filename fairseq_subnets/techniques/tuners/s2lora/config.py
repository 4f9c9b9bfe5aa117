"""S2-LoRA options (Liu et al. 2023, Eq. 3-4)."""
from dataclasses import dataclass

from ....core.targets import KIND_GROUPS, parse_weight_name
from ..base import TunerConfig, option

MODULE_GROUPS = {"attention": KIND_GROUPS["attn"], "ffn": KIND_GROUPS["ffn"]}
"""The encoder's module groups; each shares one factor pair per matrix shape across all layers."""

PRUNED_RANK_THRESHOLD = 1e-4
"""A rank coefficient with |s| below this counts as pruned (the paper's Fig. 3)."""


def module_group(weight_name: str) -> str:
    kind = parse_weight_name(weight_name)[1]
    return next(group for group, kinds in MODULE_GROUPS.items() if kind in kinds)


@dataclass(frozen=True)
class S2LoraConfig(TunerConfig):
    """Delta W_i = B diag(s_i) A with A (r x d_in) and B (d_out x r) shared by every matrix of one
    module group and shape, and s_i per matrix. Loss terms: `s2lora_sparsity` =
    sparsity_weight * mean_i ||s_i||_1 and `s2lora_factors` = factor_weight * (1 / 2r) *
    sum_k (||B[:, k]||_2 + ||A[k, :]||_2), summed over the shared pairs. A and B start N(0, 0.02^2),
    s at 0. Defaults: the paper's (every matrix, r = 8, 0.05 and 0.1)."""

    method = "s2lora"
    r: int = option(8, "rank of the shared factors", rank=True)
    sparsity_weight: float = option(0.05, "alpha1, weight of the mean L1 of the rank coefficients")
    factor_weight: float = option(0.1, "alpha2, weight of the factors' column and row norms")

    def check(self) -> None:
        super().check()
        for name in ("sparsity_weight", "factor_weight"):
            if not getattr(self, name) >= 0:
                raise self.error(name, f"must be >= 0 (got {getattr(self, name)!r})")

    def trainable_count(self, shapes) -> int:
        pairs = {(module_group(name), shape) for name, shape in shapes.items()}
        return sum(self.r * (d_out + d_in) for _, (d_out, d_in) in pairs) + self.r * len(shapes)
