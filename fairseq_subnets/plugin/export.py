"""Export: a checkpoint of stock fairseq components with the masks baked into plain weights.

The result has exactly the stock model's inference cost and loads in stock fairseq without the
plugin, also under torch's weights-only loader: `subnets_<name>` components become the stock
`<name>` (our names are the stock names with a prefix) with our extra config keys removed,
parametrized weights become `<module>.weight` = effective weight, and the pieces only training or
the plugin needs (optimizer state, the pickled Dictionary of the task state) are left out;
fairseq-generate reads the dictionary from the data directory, as it does for any checkpoint
without a task state.
"""
import io
from dataclasses import fields

import torch
from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.tasks import TASK_DATACLASS_REGISTRY

from ..atomic import write_atomically
from ..core.maskfile import load_mask_file
from ..core.parametrize import bake_state_dict
from .checkpoints import load_checkpoint

PLUGIN_PREFIX = "subnets_"
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


def export_plain_checkpoint(checkpoint_path, out_path, mask_path=None):
    """Writes `out_path` (atomically) from `checkpoint_path`, optionally masking it with a mask
    file first."""
    state = load_checkpoint(checkpoint_path)
    masks = load_mask_file(mask_path).masks if mask_path else None
    model_state = bake_state_dict(state["model"], masks=masks)
    exported = {key: value for key, value in state.items() if key not in TRAINING_ONLY_KEYS}
    exported["model"] = model_state
    cfg = dict(state.get("cfg") or {})
    for section, registry in STOCK_REGISTRIES.items():
        if section in cfg:
            cfg[section] = stock_component_config(cfg[section], registry)
    if isinstance(cfg.get("common"), dict):
        cfg["common"] = {**cfg["common"], "user_dir": None}
    exported["cfg"] = cfg
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    write_atomically(out_path, buffer.getvalue())
