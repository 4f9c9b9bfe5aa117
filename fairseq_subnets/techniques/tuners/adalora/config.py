"""AdaLoRA options (Zhang et al. 2023, as HF PEFT implements it and the S2-LoRA paper ran it)."""
from dataclasses import dataclass
from typing import Optional

from ..base import TunerConfig, option


@dataclass(frozen=True)
class AdaLoraConfig(TunerConfig):
    """Delta W = (alpha / r) P diag(lambda) Q with Q (r x d_in) and P (d_out x r) drawn from
    N(0, 0.02^2) and lambda starting at 0; r = init_r.

    The rules, exactly:
    - Orthogonality (`adalora_orthogonality`): orthogonality_weight * the mean over all P and Q of
      ||P^T P - I||_F and ||Q Q^T - I||_F (not squared: PEFT's form).
    - Importance, after each update t < total - final, for every entry w of P, lambda, Q with
      gradient g: I = |w g|; sensitivity S <- beta1 S + (1 - beta1) I; uncertainty
      U <- beta2 U + (1 - beta2) |I - S| (with the new S). An entry scores S U; triplet k of a
      matrix scores score(lambda_k) + mean_j score(Q[k, j]) + mean_i score(P[i, k]).
    - Budget (total ranks over all matrices), b0 = init_r x N and bT = target_r x N:
      b0 while t <= warmup; bT once t > total - final; in between
      bT + (b0 - bT) (1 - (t - warmup) / (total - final - warmup))^3, rounded down.
    - Masking, at every `interval`-th update in between and at every update of the final phase:
      the (b0 - budget) lowest-scoring triplets (ties at the threshold included) get lambda = 0.
      Their factors stay, so a triplet can come back at a later masking.
    Defaults: q and v, init_r 12, target_r 8 (the paper); alpha 8, betas 0.85 and orthogonality 0.5
    (PEFT's)."""

    method = "adalora"
    targets: str = "q,v"
    init_r: int = option(12, "initial rank of every matrix", rank=True)
    target_r: int = option(8, "rank per matrix the budget shrinks to", rank=True)
    alpha: float = option(8.0, "the delta is scaled by alpha / r")
    total_updates: Optional[int] = option(None, "updates of the budget schedule; required (set it to the run's "
                                                "optimization.max_update, as the shipped configs do)")
    warmup_updates: int = option(0, "updates at the initial budget before it shrinks")
    final_updates: int = option(0, "last updates of the schedule at the target budget")
    interval: int = option(1, "updates between maskings while the budget shrinks")
    beta1: float = option(0.85, "smoothing of the sensitivity")
    beta2: float = option(0.85, "smoothing of the uncertainty")
    orthogonality_weight: float = option(0.5, "weight of the orthogonality term")

    def check(self) -> None:
        super().check()
        if self.target_r > self.init_r:
            raise self.error("target_r", f"{self.target_r} is above init_r {self.init_r}")
        if not self.alpha > 0:
            raise self.error("alpha", f"must be > 0 (got {self.alpha!r})")
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) < 1:
                raise self.error(name, f"must be in (0, 1) (got {getattr(self, name)!r})")
        for name in ("warmup_updates", "final_updates"):
            if getattr(self, name) < 0:
                raise self.error(name, f"must be >= 0 (got {getattr(self, name)!r})")
        if self.interval < 1:
            raise self.error("interval", f"must be >= 1 (got {self.interval!r})")
        if self.total_updates is None:
            raise self.error("total_updates", "required: the updates of the budget schedule (set it to the run's "
                                              "updates, optimization.max_update in fairseq, as the shipped configs do)")
        if self.warmup_updates + self.final_updates >= self.total_updates:
            raise self.error("total_updates", f"{self.total_updates} leaves no update between warmup "
                                              f"({self.warmup_updates}) and the final phase ({self.final_updates})")
        if not self.orthogonality_weight >= 0:
            raise self.error("orthogonality_weight", f"must be >= 0 (got {self.orthogonality_weight!r})")

    def check_run(self, max_update: int, max_update_key: str) -> None:
        """A schedule longer than the run never reaches target_r: the run would end with the
        budget still above it."""
        if max_update and self.total_updates > max_update:
            raise self.error("total_updates", f"{self.total_updates} is above {max_update_key}={max_update}: the "
                                              f"rank budget would never shrink to target_r in this run; set it to "
                                              f"at most {max_update_key}")

    def trainable_count(self, shapes) -> int:
        return sum(self.init_r * (d_out + d_in + 1) for d_out, d_in in shapes.values())
