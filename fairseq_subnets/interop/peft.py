"""PEFT adapter folders from adapter files: what a tuner run trained, in the form HF PEFT loads
onto HF's wav2vec2.

`PeftModel.from_pretrained(Wav2Vec2ForCTC.from_pretrained(BASE), OUT)` then computes what the run's
merged model computes, where BASE is `export --format hf` of the backbone the run was trained on
(any CTC model with that backbone and the run's vocabulary size: the adapter brings its own output
layer, which the run trained, as a module PEFT saves whole, `modules_to_save`).

Each tuner declares in its own folder, reached through its `TUNER`, either its PEFT form
(`techniques/tuners/<method>/peft.py`), where PEFT's own tuner computes exactly what ours does
(tests/test_peft_export.py holds each to PEFT 0.21), or the one line saying why PEFT has none; such
a method is refused with that line and the way out: `export --format hf` of the merged model. This
module writes every method's folder the same way and names no method.

The adapted matrices get HF's names (interop.hf_layout), handed to the forms as data, and are
listed in `target_modules` by their full path, so a run on some layers adapts exactly those. The
folder is written from these rules alone: nothing here imports peft, which only loading the folder
needs. It is written under a hidden name and renamed into place when complete
(interop.hf.folder_written_whole).
"""
import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import save as safetensors_bytes

from ..errors import PluginInputError
from ..plugin.formats.adapters import Adapter, check_adapter_fits
from ..techniques.extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX
from ..techniques.tuners import TRANSFORM_STATE, TUNERS, tuner_config_of
from ..techniques.tuners.peft_form import AdaptedMatrix, PeftFormMaker, saved
from .hf import check_empty_folder, folder_written_whole
from .hf_layout import HF_BODY_PREFIX, HF_OUTPUT_PREFIX, LayoutError, hf_body_name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
OUTPUT_MODULE = HF_OUTPUT_PREFIX.rstrip(".")


class PeftExportError(PluginInputError):
    """An adapter file whose method has no exact PEFT form (or that adapts a matrix HF's wav2vec2 lacks)."""


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


def peft_form_of(adapter: Adapter, path: str) -> PeftFormMaker:
    """The PEFT form the adapter's method declares; refuses, in one line naming the way out, a
    method that declares PEFT cannot hold it."""
    tuner = TUNERS[adapter.method]
    if tuner.peft_form is None:
        raise PeftExportError(f"{path}: the {adapter.method} adapter has no exact PEFT form "
                              f"({tuner.no_peft_form}); export the merged model instead: "
                              "fairseq-subnets adapters apply, then fairseq-subnets export CKPT --format hf")
    return tuner.peft_form


def peft_folder_contents(adapter: Adapter, path: str, form: PeftFormMaker) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(adapter_config.json, saved tensors) of an adapter whose tensors fit its run config
    (check_adapter_fits), written in its method's PEFT `form` (peft_form_of)."""
    matrices = adapted_matrices(adapter, path)
    fields, tensors = form(matrices, tuner_config_of(adapter.cfg["model"]))
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
    form = peft_form_of(adapter, adapter_path)  # a method PEFT cannot hold is refused before its model is built
    check_adapter_fits(adapter, adapter_path)
    config, tensors = peft_folder_contents(adapter, adapter_path, form)
    weights = safetensors_bytes({key: tensor.detach().contiguous().clone() for key, tensor in tensors.items()},
                                metadata={"format": "pt"})
    with folder_written_whole(out_dir) as folder:
        # written with open(), so the umask applies (safetensors' save_file creates files 0600)
        Path(folder, WEIGHTS_FILE).write_bytes(weights)
        Path(folder, CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config
