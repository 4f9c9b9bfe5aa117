"""AdaLoRA's PEFT form: PEFT's AdaLoRA tuner, the triplets the budget kept given as its
`rank_pattern` and only those stored."""
from ..peft_form import PeftForm, saved

ADALORA_RANK_OFFSET = 1e-5
"""PEFT's AdaLoRA scales its delta by lora_alpha / (r + 1e-5) where ours uses alpha / r; the
exported lora_alpha is ours times (r + 1e-5) / r, so the factors are stored as trained."""


def adalora_form(matrices, tuner) -> PeftForm:
    """(alpha / r) P diag(lambda) Q with r the initial rank; only the kept triplets are stored,
    their positions in `rank_pattern` (PEFT keeps r as its divisor when it loads them)."""
    tensors, rank_pattern = {}, {}
    for matrix in matrices:
        kept = matrix.state["kept"]
        rank_pattern[f"{matrix.module}.lora_E"] = kept.tolist()
        tensors.update(saved(matrix.module, {"lora_A": matrix.state["lora_A"][kept],
                                             "lora_E": matrix.state["lora_E"][kept][:, None],
                                             "lora_B": matrix.state["lora_B"][:, kept]}))
    fields = {"peft_type": "ADALORA", "init_r": tuner.init_r, "target_r": tuner.target_r,
              "lora_alpha": tuner.alpha * (tuner.init_r + ADALORA_RANK_OFFSET) / tuner.init_r,
              "rank_pattern": rank_pattern, "total_step": tuner.total_updates, "tinit": tuner.warmup_updates,
              "tfinal": tuner.final_updates, "deltaT": tuner.interval, "beta1": tuner.beta1, "beta2": tuner.beta2,
              "orth_reg_weight": tuner.orthogonality_weight, "lora_dropout": 0.0, "fan_in_fan_out": False,
              "bias": "none"}
    return fields, tensors
