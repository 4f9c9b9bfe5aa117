"""VeRA's PEFT form: PEFT's VeRA tuner with the shared bases saved beside the adapter
(`save_projection`), so no seed has to draw them again."""
from ..peft_form import TUNER_MODEL_PREFIX, PeftForm, saved


def vera_form(matrices, tuner) -> PeftForm:
    """diag(b) B diag(d) A over the bases every matrix shares (one tensor in the adapter file, the
    others aliases of it), stored once beside the matrices."""
    bases = {f"{TUNER_MODEL_PREFIX}{name}": matrices[0].state[name] for name in ("vera_A", "vera_B")}
    tensors = dict(bases)
    for matrix in matrices:
        tensors.update(saved(matrix.module, {"vera_lambda_b": matrix.state["lambda_b"],
                                             "vera_lambda_d": matrix.state["lambda_d"]}))
    fields = {"peft_type": "VERA", "r": tuner.r, "projection_prng_key": tuner.projection_seed,
              "d_initial": tuner.d_initial, "save_projection": True, "vera_dropout": 0.0, "fan_in_fan_out": False,
              "bias": "none"}
    return fields, tensors
