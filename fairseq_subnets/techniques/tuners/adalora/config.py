"""AdaLoRA options (Zhang et al. 2023, as HF PEFT implements it and the S2-LoRA paper ran it)."""
from dataclasses import dataclass

from ..base import TunerConfig, TunerError


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
    init_r: int = 12
    target_r: int = 8
    alpha: float = 8.0
    total_updates: int = 1000
    warmup_updates: int = 0
    final_updates: int = 0
    interval: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orthogonality_weight: float = 0.5

    def check(self) -> None:
        super().check()
        self.check_rank("init_r")
        self.check_rank("target_r")
        if self.target_r > self.init_r:
            raise TunerError(f"{self.key('target_r')}: {self.target_r} is above init_r {self.init_r}")
        if not self.alpha > 0:
            raise TunerError(f"{self.key('alpha')}: must be > 0 (got {self.alpha!r})")
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) < 1:
                raise TunerError(f"{self.key(name)}: must be in (0, 1) (got {getattr(self, name)!r})")
        for name in ("warmup_updates", "final_updates"):
            if getattr(self, name) < 0:
                raise TunerError(f"{self.key(name)}: must be >= 0 (got {getattr(self, name)!r})")
        if self.interval < 1:
            raise TunerError(f"{self.key('interval')}: must be >= 1 (got {self.interval!r})")
        if self.warmup_updates + self.final_updates >= self.total_updates:
            raise TunerError(f"{self.key('total_updates')}: {self.total_updates} leaves no update between warmup "
                             f"({self.warmup_updates}) and the final phase ({self.final_updates})")
        if not self.orthogonality_weight >= 0:
            raise TunerError(f"{self.key('orthogonality_weight')}: must be >= 0 (got {self.orthogonality_weight!r})")

    def trainable_count(self, shapes) -> int:
        return sum(self.init_r * (d_out + d_in + 1) for d_out, d_in in shapes.values())
