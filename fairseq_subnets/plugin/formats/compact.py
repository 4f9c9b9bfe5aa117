"""The compact checkpoint (`fairseq-subnets export --compact`): the stock export's checkpoint with
every masked encoder matrix stored as its entropy-coded mask and its kept float32 values
(core.compact), every other tensor as it is.

It is a fairseq checkpoint that torch loads weights-only: plain containers and tensors (the coded
streams and the checksummed description are uint8 tensors), no pickled object. Its model config
is the plugin's `subnets_wav2vec_ctc` with `compact_checkpoint: true` (the key that says the state
is compact, so our task can check the file before any model is built, and training refuses it)
and `sparse_decoding: on`, so `fairseq-generate --user-dir fairseq_subnets/plugin` builds each
masked matrix's CSR form straight from the kept values and the mask, never its dense weight
(techniques.sparse_decoding). With `--model-overrides "{'sparse_decoding': 'off'}"` the dense
weights are rebuilt instead, and the model decodes as the stock export does.
"""
import io
import json
import os
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ...atomic import write_atomically
from ...component_names import PLUGIN_CTC_MODEL
from ...core.compact import CompactMatrix, compact_state, is_compact_state, read_compact_state
from ...techniques.extension import W2V_PREFIX
from ...techniques.sparse_decoding import COMPACT_KEY, KEY as SPARSE_DECODING_KEY
from .checkpoints import ZIP_MAGIC, CheckpointLoadError, load_checkpoint, load_fairseq_checkpoint

def compact_checkpoint(exported: Mapping[str, object], mask_names: Iterable[str]) -> Dict[str, object]:
    """The compact checkpoint of a stock export (`export.plain_checkpoint`) of a CTC model
    (stock wav2vec_ctc) whose encoder matrices `mask_names` (model-relative, as in mask files) are
    masked."""
    cfg = dict(exported.get("cfg") or {})
    model_cfg = dict(cfg.get("model") or {})
    model_cfg.update({"_name": PLUGIN_CTC_MODEL, COMPACT_KEY: True, SPARSE_DECODING_KEY: "on"})
    cfg["model"] = model_cfg
    keys = [W2V_PREFIX + name for name in mask_names]
    checkpoint = {**exported, "cfg": cfg}
    checkpoint["model"] = compact_state(exported["model"], keys, checkpoint_context(checkpoint))
    return checkpoint


def checkpoint_context(checkpoint: Mapping[str, object]) -> bytes:
    """What a checkpoint holds beside its model state (its config, fairseq's bookkeeping), as the
    bytes its compact state's checksum covers: JSON in the order torch keeps (weights-only loading
    gives back the same plain values in the same order)."""
    return json.dumps({key: value for key, value in checkpoint.items() if key != "model"}, default=repr).encode()


def compact_checkpoint_bytes(checkpoint: Mapping[str, object]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(checkpoint), buffer)
    return buffer.getvalue()


def write_compact_checkpoint(path, checkpoint: Mapping[str, object]) -> int:
    """Writes `checkpoint` (from `compact_checkpoint`) to `path` atomically, renamed into place only
    once the written file reads back and verifies; returns its bytes (the size the `bench` group
    reports against the dense export)."""
    data = compact_checkpoint_bytes(checkpoint)
    write_atomically(path, data, check_written=read_compact_checkpoint)
    return len(data)


def write_compact_model_state(path, model_state: Mapping[str, torch.Tensor], mask_names: Iterable[str]) -> int:
    """Writes a CTC model's state (masks baked, as the stock export holds it) with the matrices
    `mask_names` (model-relative) coded, as `{"model": state}` without a config, and returns its
    bytes: the size of a compact checkpoint less its config (a few kB), for the `bench` group to
    set against `torch.save` of the same dense state. `read_compact_checkpoint` reads it back."""
    keys = [W2V_PREFIX + name for name in mask_names]
    return write_compact_checkpoint(path, {"model": compact_state(model_state, keys, checkpoint_context({}))})


def read_compact_checkpoint(path) -> Tuple[Dict[str, object], Dict[str, torch.Tensor], Dict[str, CompactMatrix]]:
    """(the checkpoint, its plain tensors, its coded matrices by weight key) of a compact checkpoint
    file, read weights-only and verified (checksum, layout, sizes) before anything is decoded; the
    loader whose time the `bench` group measures. Errors name the file."""
    checkpoint = load_fairseq_checkpoint(path, compact=True)
    if not is_compact_state(checkpoint["model"]):
        raise CheckpointLoadError(f"{path}: not a compact checkpoint (written by fairseq-subnets export --compact)")
    plain, matrices = read_compact_state(checkpoint["model"], str(path), checkpoint_context(checkpoint))
    return checkpoint, plain, matrices


def check_checkpoints_to_decode(paths: Optional[List[str]]) -> None:
    """Refuses, naming the file, a checkpoint fairseq-generate is about to load that is a damaged
    torch checkpoint (truncated, a zip archive of another kind), an adapter file, a compact checkpoint
    that fails its checks, or a bundle that fails the bundle commands' checks (its checksum over every
    tensor, each language's masks, output layer and dictionary: plugin.formats.bundles): called when
    the task is set up, before fairseq reads the checkpoint and builds any model. A look at the
    config is cheap (the file is mapped, its tensors read only if it is compact or a bundle).
    Missing files are left to fairseq, which names them, and so are files in torch's legacy
    (pre-zip) format, which cannot be mapped and are never compact."""
    from .adapters import is_adapter_file
    from .bundles import checked_bundle, is_bundle

    for path in paths or ():
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC and not is_adapter_file(path):
                continue
        checkpoint = load_checkpoint(path, mmap=True)  # an adapter file fails here, named as one
        if is_bundle(checkpoint):
            checked_bundle(checkpoint, path)
        model_cfg = ((checkpoint.get("cfg") or {}).get("model") or {}) if isinstance(checkpoint, dict) else {}
        if isinstance(model_cfg, Mapping) and model_cfg.get(COMPACT_KEY):
            read_compact_checkpoint(path)
