"""Export: a checkpoint of stock fairseq components with the masks baked into plain weights.

The result has exactly the stock model's inference cost and loads in stock fairseq without the
plugin, also under torch's weights-only loader: `subnets_<name>` components become the stock
`<name>` (our names are the stock names with a prefix) with our extra config keys removed,
parametrized weights become `<module>.weight` = effective weight, and the pieces only training or
the plugin needs (optimizer state, the pickled Dictionary of the task state, a pruning run's rewind
point and block norms) are left out;
fairseq-generate reads the dictionary from the data directory, as it does for any checkpoint
without a task state.

With `compact`, the same checkpoint is written as a compact checkpoint (plugin.formats.compact):
each masked encoder matrix as its coded mask and kept values, for the plugin's sparse path.
"""
import io
import os
from dataclasses import fields

import torch
from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.tasks import TASK_DATACLASS_REGISTRY

from ...atomic import check_writable, write_atomically
from ...component_names import PLUGIN_FINETUNING_TASK, PLUGIN_PREFIX, STOCK_CTC_MODEL
from ...core.maskfile import MaskFile, MaskFileError, load_mask_file
from ...core.parametrize import bake_state_dict, masks_from_state_dict
from ..formats.bundles import expand_bundle_masks
from ..formats.checkpoints import load_fairseq_checkpoint
from ..formats.compact import compact_checkpoint, write_compact_checkpoint
from ...techniques.extension import without_training_state
from ...techniques.language_heads import single_language_state
from ..components.models import TRAINING_STATE_PREFIXES

STOCK_REGISTRIES = {"model": MODEL_DATACLASS_REGISTRY, "task": TASK_DATACLASS_REGISTRY, "criterion": CRITERION_DATACLASS_REGISTRY}
TRAINING_ONLY_KEYS = ("last_optimizer_state", "task_state")


def stock_component_config(section, registry):
    """A component config of ours rewritten as the stock component it extends."""
    name = section.get("_name") if isinstance(section, dict) else None
    if not name or not name.startswith(PLUGIN_PREFIX):
        return section
    stock_name = name[len(PLUGIN_PREFIX):]
    stock_keys = {f.name for f in fields(registry[stock_name])}
    converted = {key: value for key, value in section.items() if key in stock_keys}
    converted["_name"] = stock_name
    return converted


def stock_components(cfg):
    """A run config (a checkpoint's cfg, or the pretraining run's `w2v_args` a CTC model keeps)
    with every component of ours rewritten as the stock component it extends."""
    cfg = dict(cfg)
    for section, registry in STOCK_REGISTRIES.items():
        if section in cfg:
            cfg[section] = stock_component_config(cfg[section], registry)
    return cfg


def single_language_task(task_cfg, language):
    """The single-language fine-tuning task of one language of a multilingual task config: its
    data folder is the language's manifest folder (the multilingual task's `data/<language>`)."""
    task_cfg = dict(task_cfg)
    if task_cfg.get("data"):
        task_cfg["data"] = os.path.join(task_cfg["data"], language)
    task_cfg["_name"] = PLUGIN_FINETUNING_TASK
    return task_cfg


def _masked_by(model_state, mask_file: MaskFile, checkpoint_path):
    """`model_state` (transforms already baked) with the mask file's masks applied; a mask the
    checkpoint has no weight of that shape for fails naming both files."""
    try:
        return bake_state_dict(model_state, masks=mask_file.masks)
    except ValueError as error:
        raise MaskFileError(f"{mask_file.path}: does not fit {checkpoint_path} ({error})") from None


def export_plain_checkpoint(checkpoint_path, out_path, mask_path=None, language=None, compact=False):
    """Writes `out_path` (atomically) from `checkpoint_path`, optionally masking it with a mask
    file first. `language` picks one language of a multilingual checkpoint (its output layer and
    its per-language masks); a single-language stock model comes out; `compact` writes it as a
    compact checkpoint. The output location is checked and both input files are read before any
    work; nothing is written unless all fit."""
    check_writable(out_path)
    state = load_fairseq_checkpoint(checkpoint_path)
    mask_file = load_mask_file(mask_path) if mask_path else None
    exported = plain_checkpoint(state, checkpoint_path, mask_file, language)
    if compact:
        model_name = (exported["cfg"].get("model") or {}).get("_name")
        if model_name != STOCK_CTC_MODEL:
            raise ValueError(f"--compact stores a fine-tuned CTC model ({STOCK_CTC_MODEL}) for decoding; this is "
                             f"a {model_name} model")
        names = set(masks_from_state_dict(expand_bundle_masks(state["model"]), language=language))
        names |= set(mask_file.masks if mask_file is not None else ())
        if not names:
            raise ValueError("holds no masks (fixed, learned or per-language), so --compact has no masked matrix to "
                             "store compactly: name the mask with --mask MASK")
        write_compact_checkpoint(out_path, compact_checkpoint(exported, sorted(names)))
        return
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    write_atomically(out_path, buffer.getvalue())


def plain_checkpoint(state, checkpoint_path, mask_file=None, language=None):
    """The stock checkpoint of the loaded checkpoint `state` (read from `checkpoint_path`), as
    export_plain_checkpoint writes it; also the source of the HF export (interop.hf)."""
    cfg = dict(state.get("cfg") or {})
    model_state = expand_bundle_masks(state["model"])
    if language is not None:
        model_state, cfg["model"] = single_language_state(model_state, cfg.get("model") or {}, language)
        cfg["task"] = single_language_task(cfg.get("task") or {}, language)
    model_state = bake_state_dict(model_state, language=language)
    model_state = without_training_state(model_state, TRAINING_STATE_PREFIXES)
    if mask_file is not None:
        model_state = _masked_by(model_state, mask_file, checkpoint_path)
    exported = {key: value for key, value in state.items() if key not in TRAINING_ONLY_KEYS}
    exported["model"] = model_state
    cfg = stock_components(cfg)
    if isinstance((cfg.get("model") or {}).get("w2v_args"), dict):
        cfg["model"] = {**cfg["model"], "w2v_args": stock_components(cfg["model"]["w2v_args"])}
    if isinstance(cfg.get("common"), dict):
        cfg["common"] = {**cfg["common"], "user_dir": None}
    exported["cfg"] = cfg
    return exported
