"""What a tuner declares to be written as an HF PEFT adapter folder: its PEFT form, a function of
the matrices it adapted and its tuner config giving the adapter_config.json fields of its method
and the tensors under PEFT's saved keys (or, in `Tuner.no_peft_form`, the one line saying why PEFT
has no tuner of its form).

A form is declared in its method's folder (`<method>/peft.py`) and reached through the method's
`TUNER`; `interop.peft` writes the folder from it, the same way for every method. The matrices come
named as the model PEFT wraps names them (HF's wav2vec2, computed by `interop.hf_layout`), so a
form is pure torch: it imports neither peft nor transformers nor fairseq.
"""
from typing import Callable, Dict, List, Mapping, NamedTuple, Tuple

import torch

MODEL_PREFIX = "base_model.model."
"""Where PEFT's saved keys put the modules of the model it wraps."""
TUNER_MODEL_PREFIX = "base_model."
"""Where they put what its tuner holds once for every matrix (VeRA's bases)."""


class AdaptedMatrix(NamedTuple):
    module: str
    """The adapted linear layer's path in the model PEFT wraps (HF's:
    `wav2vec2.encoder.layers.0.attention.q_proj`)."""
    kind: str
    """Our transform kind (`lora`, `ia3_in`, ...)."""
    state: Dict[str, torch.Tensor]
    """The transform's state entries (`lora_A`, `alpha`, ...)."""


PeftForm = Tuple[dict, Dict[str, torch.Tensor]]
"""(adapter_config.json fields of the method, saved tensors under PEFT's keys)."""
PeftFormMaker = Callable[[List[AdaptedMatrix], object], PeftForm]
"""A method's form from its adapted matrices and its tuner config (the options read off the run
config, as `adapters apply` builds them)."""


def saved(module: str, entries: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`entries` (name under the module -> tensor) under PEFT's saved keys."""
    return {f"{MODEL_PREFIX}{module}.{name}": tensor for name, tensor in entries.items()}


def low_rank_form(matrices: List[AdaptedMatrix], tuner, dora: bool) -> PeftForm:
    """PEFT's LoRA, (alpha / r) B A on each matrix, which LoRA and DoRA share; with `dora` (PEFT's
    `use_dora`) each output row is also rescaled to its trained magnitude."""
    fields = {"peft_type": "LORA", "r": tuner.r, "lora_alpha": tuner.alpha, "lora_dropout": 0.0, "use_rslora": False,
              "use_dora": dora, "fan_in_fan_out": False, "bias": "none"}
    tensors = {}
    for matrix in matrices:
        entries = {"lora_A.weight": matrix.state["lora_A"], "lora_B.weight": matrix.state["lora_B"]}
        if dora:
            entries["lora_magnitude_vector"] = matrix.state["magnitude"]
        tensors.update(saved(matrix.module, entries))
    return fields, tensors
