"""PEFT adapter folders from adapter files: what a tuner run trained, in the form HF PEFT loads
onto HF's wav2vec2.

`PeftModel.from_pretrained(Wav2Vec2ForCTC.from_pretrained(BASE), OUT)` then computes what the run's
merged model computes, where BASE is `export --format hf` of the backbone the run was trained on
(any CTC model with that backbone and the run's vocabulary size: the adapter brings its own output
layer, which the run trained, as a module PEFT saves whole, `modules_to_save`).

A method is written only where PEFT's own tuner computes exactly what ours does (tests/test_peft_export.py
holds each to PEFT 0.21): LoRA; DoRA (PEFT's LoRA with `use_dora`); IA3 (the feed-forward matrices
scaled on their input, PEFT's `feedforward_modules`); VeRA (the shared bases saved with the adapter,
`save_projection`, so no seed has to draw them again); AdaLoRA (the triplets the budget kept as
PEFT's `rank_pattern`, only those stored); GLoRA (PEFT's default paths: low-rank A, B and C, scalar D
and E). The other methods have no PEFT tuner of their form and are refused with one line naming
the way out: `export --format hf` of the merged model.

The adapted matrices get HF's names (interop.hf_layout) and are listed in `target_modules` by their
full path, so a run on some layers adapts exactly those. The folder is written from these rules
alone: nothing here imports peft, which only loading the folder needs. It is written under a
hidden name and renamed into place when complete (interop.hf.folder_written_whole).
"""
import json
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Tuple

import torch
from safetensors.torch import save as safetensors_bytes

from ..errors import PluginInputError
from ..plugin.formats.adapters import Adapter, check_adapter_fits
from ..techniques.extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX
from ..techniques.tuners import TRANSFORM_STATE, tuner_config_of
from .hf import check_empty_folder, folder_written_whole
from .hf_layout import HF_BODY_PREFIX, HF_OUTPUT_PREFIX, LayoutError, hf_body_name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MODEL_PREFIX = "base_model.model."
"""Where PEFT's saved keys put the modules of the model it wraps."""
TUNER_MODEL_PREFIX = "base_model."
"""Where they put what its tuner holds once for every matrix (VeRA's bases)."""
OUTPUT_MODULE = HF_OUTPUT_PREFIX.rstrip(".")
ADALORA_RANK_OFFSET = 1e-5
"""PEFT's AdaLoRA scales its delta by lora_alpha / (r + 1e-5) where ours uses alpha / r; the
exported lora_alpha is ours times (r + 1e-5) / r, so the factors are stored as trained."""
NO_PEFT_FORM = {
    "s2lora": "S2-LoRA's factors are shared by a group of matrices and weighted per matrix by trained coefficients; "
              "no PEFT tuner has that form",
    "alpha_lora": "alpha-LoRA scales each low-rank delta by a trained coefficient; PEFT's LoRA scales by the fixed "
                  "lora_alpha / r",
    "bitfit": "BitFit trains bias offsets alone; PEFT has no tuner of that form",
}
"""Method -> why PEFT cannot hold it."""


class PeftExportError(PluginInputError):
    """An adapter file whose method has no exact PEFT form (or that adapts a matrix HF's wav2vec2 lacks)."""


class AdaptedMatrix(NamedTuple):
    module: str
    """HF's path of the adapted linear layer in Wav2Vec2ForCTC (`wav2vec2.encoder.layers.0.attention.q_proj`)."""
    kind: str
    """Our transform kind (`lora`, `ia3_in`, ...)."""
    state: Dict[str, torch.Tensor]
    """The transform's state entries (`lora_A`, `alpha`, ...)."""


PeftForm = Tuple[dict, Dict[str, torch.Tensor]]
"""(adapter_config.json fields of the method, saved tensors under PEFT's keys). Each method's
form is made from its matrices and its tuner config (the options read off the run config, as
`adapters apply` builds them)."""


def adapted_matrices(adapter: Adapter, path: str) -> List[AdaptedMatrix]:
    """The adapter's transforms, one per adapted matrix, named as HF names the matrix."""
    grouped: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.tensors.items():
        module, found, rest = key.partition(TRANSFORM_STATE)
        if found:
            kind, _, entry = rest.split(".")
            grouped.setdefault((module, kind), {})[entry] = tensor
    matrices = []
    for (module, kind), state in sorted(grouped.items()):
        try:
            weight = HF_BODY_PREFIX + hf_body_name(module.removeprefix(W2V_PREFIX) + ".weight")
        except LayoutError as error:
            raise PeftExportError(f"{path}: {error}") from None
        matrices.append(AdaptedMatrix(weight[: -len(".weight")], kind, state))
    return matrices


def saved(module: str, entries: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`entries` (name under the module -> tensor) under PEFT's saved keys."""
    return {f"{MODEL_PREFIX}{module}.{name}": tensor for name, tensor in entries.items()}


def lora_form(matrices, tuner, dora=False) -> PeftForm:
    """(alpha / r) B A on each matrix; DoRA also rescales each output row to its trained magnitude."""
    fields = {"peft_type": "LORA", "r": tuner.r, "lora_alpha": tuner.alpha, "lora_dropout": 0.0, "use_rslora": False,
              "use_dora": dora, "fan_in_fan_out": False, "bias": "none"}
    tensors = {}
    for matrix in matrices:
        entries = {"lora_A.weight": matrix.state["lora_A"], "lora_B.weight": matrix.state["lora_B"]}
        if dora:
            entries["lora_magnitude_vector"] = matrix.state["magnitude"]
        tensors.update(saved(matrix.module, entries))
    return fields, tensors


def dora_form(matrices, tuner) -> PeftForm:
    return lora_form(matrices, tuner, dora=True)


def ia3_form(matrices, tuner) -> PeftForm:
    """A vector scaling the output of attention projections (bias included) and the input of the
    feed-forward matrices; PEFT stores it as a column or a row."""
    tensors = {}
    for matrix in matrices:
        vector = matrix.state["ia3_l"]
        tensors.update(saved(matrix.module, {"ia3_l": vector[None, :] if matrix.kind == "ia3_in" else vector[:, None]}))
    feedforward = [matrix.module for matrix in matrices if matrix.kind == "ia3_in"]
    return {"peft_type": "IA3", "feedforward_modules": feedforward, "fan_in_fan_out": False}, tensors


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


PEFT_FORMS: Dict[str, Callable[..., PeftForm]] = {
    "lora": lora_form, "dora": dora_form, "ia3": ia3_form, "vera": vera_form, "adalora": adalora_form,
    "glora": glora_form,
}
"""Method -> its PEFT form; every other method is refused (NO_PEFT_FORM says why)."""


def check_exportable(adapter: Adapter, path: str) -> None:
    """Refuses, in one line naming the way out, a method PEFT cannot hold."""
    if adapter.method not in PEFT_FORMS:
        raise PeftExportError(f"{path}: the {adapter.method} adapter has no exact PEFT form "
                              f"({NO_PEFT_FORM[adapter.method]}); export the merged model instead: "
                              "fairseq-subnets adapters apply, then fairseq-subnets export CKPT --format hf")


def peft_folder_contents(adapter: Adapter, path: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(adapter_config.json, saved tensors) of an adapter whose method has a PEFT form and whose
    tensors fit its run config (check_exportable, check_adapter_fits)."""
    matrices = adapted_matrices(adapter, path)
    fields, tensors = PEFT_FORMS[adapter.method](matrices, tuner_config_of(adapter.cfg["model"]))
    tensors.update(saved(OUTPUT_MODULE, {name[len(STOCK_OUTPUT_LAYER_PREFIX):]: tensor for name, tensor
                                         in adapter.tensors.items() if name.startswith(STOCK_OUTPUT_LAYER_PREFIX)}))
    config = {**fields, "target_modules": [matrix.module for matrix in matrices],
              "modules_to_save": [OUTPUT_MODULE], "base_model_name_or_path": None, "revision": None,
              "task_type": None, "inference_mode": True}
    return config, tensors


def write_peft_folder(adapter: Adapter, adapter_path: str, out_dir) -> dict:
    """Writes the PEFT folder `out_dir` (which must not exist, or be empty) of the adapter read from
    `adapter_path`; returns its adapter_config.json fields."""
    check_empty_folder(out_dir)
    check_exportable(adapter, adapter_path)
    check_adapter_fits(adapter, adapter_path)
    config, tensors = peft_folder_contents(adapter, adapter_path)
    weights = safetensors_bytes({key: tensor.detach().contiguous().clone() for key, tensor in tensors.items()},
                                metadata={"format": "pt"})
    with folder_written_whole(out_dir) as folder:
        # written with open(), so the umask applies (safetensors' save_file creates files 0600)
        Path(folder, WEIGHTS_FILE).write_bytes(weights)
        Path(folder, CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config
