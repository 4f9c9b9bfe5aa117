"""GLoRA's PEFT form: PEFT's GLoRA tuner on its default paths (low-rank A, B and C, scalar D and E)."""
from ..peft_form import PeftForm, saved

GLORA_PATHS = {"scale_up": "glora_A.Xd", "scale_down": "glora_A.Xu", "delta_up": "glora_B.Xd",
               "delta_down": "glora_B.Xu", "coupling_up": "glora_C.Xd", "coupling_down": "glora_C.Xu",
               "bias_scale": "glora_D.X", "bias_shift": "glora_E.X"}
"""Our GLoRA state entry -> PEFT's: A and B of the weight, C coupling the bias to the weight, the
bias's scale D and shift E."""


def glora_form(matrices, tuner) -> PeftForm:
    """W + W * A + B and b + b * D + E + W C, PEFT's paths A, B, C low-rank and D, E scalars."""
    tensors = {}
    for matrix in matrices:
        tensors.update(saved(matrix.module, {theirs: matrix.state[ours].reshape(-1) if ours.startswith("bias_")
                                             else matrix.state[ours] for ours, theirs in GLORA_PATHS.items()}))
    fields = {"peft_type": "GLORA", "r": tuner.r, "config_A_B": "lora", "config_C": "lora", "config_D_E": "constant"}
    return fields, tensors
