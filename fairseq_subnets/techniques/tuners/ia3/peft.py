"""IA3's PEFT form: PEFT's IA3 tuner, the feed-forward matrices scaled on their input (its
`feedforward_modules`)."""
from ..peft_form import PeftForm, saved


def ia3_form(matrices, tuner) -> PeftForm:
    """A vector scaling the output of attention projections (bias included) and the input of the
    feed-forward matrices; PEFT stores it as a column or a row."""
    tensors = {}
    for matrix in matrices:
        vector = matrix.state["ia3_l"]
        tensors.update(saved(matrix.module, {"ia3_l": vector[None, :] if matrix.kind == "ia3_in" else vector[:, None]}))
    feedforward = [matrix.module for matrix in matrices if matrix.kind == "ia3_in"]
    return {"peft_type": "IA3", "feedforward_modules": feedforward, "fan_in_fan_out": False}, tensors
