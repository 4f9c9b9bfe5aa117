"""DoRA's PEFT form: PEFT's LoRA tuner with `use_dora`, each row rescaled to its trained magnitude."""
from ..peft_form import PeftForm, low_rank_form


def dora_form(matrices, tuner) -> PeftForm:
    return low_rank_form(matrices, tuner, dora=True)
