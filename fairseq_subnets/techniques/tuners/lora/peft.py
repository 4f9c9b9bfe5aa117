"""LoRA's PEFT form: PEFT's LoRA tuner, which computes (alpha / r) B A as ours does."""
from ..peft_form import PeftForm, low_rank_form


def lora_form(matrices, tuner) -> PeftForm:
    return low_rank_form(matrices, tuner, dora=False)
