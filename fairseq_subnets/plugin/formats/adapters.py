"""Adapter files: just what a tuner run trained, applied to a backbone someone already has.

A tuner run (`+model.tuner=...`) changes nothing of the pretrained model: what it trained is the
tuner's parameters and the CTC output layer, a fraction of a percent of the checkpoint. An adapter
file holds exactly these (safetensors; shared tensors such as S2-LoRA's factors once) with, as
metadata, the method, its options, the run's config, the character dictionary and the backbone's
fingerprint: a sha256 over the names, dtypes, shapes and bytes of every wav2vec2 tensor the model
uses. Applying the file to a checkpoint holding that backbone (the pretraining checkpoint, or any
checkpoint of a run on it) rebuilds the run's checkpoint, which fairseq-generate decodes and
`export` merges; a backbone with another fingerprint is refused before anything is written.
"""
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

import torch
from fairseq.data.dictionary import Dictionary
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from ...core.transforms import TRANSFORM_KINDS, parse_plan
from ...core.tuners import TRANSFORM_STATE, TUNER_KINDS
from .checkpoints import ZIP_MAGIC, load_fairseq_checkpoint, trainer_checkpoint
from ...errors import PluginInputError
from ...techniques.extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX

ADAPTER_FORMAT = "fairseq-subnets-adapter"
ADAPTER_VERSION = "1"
METADATA_KEYS = ("format", "version", "method", "tuner", "backbone_sha256", "backbone_tensors", "cfg", "dictionary",
                 "aliases")
_WEIGHT_ORIGINAL = ".parametrizations.weight.original"
_BIAS_ORIGINAL = ".parametrizations.bias.original"


class AdapterError(PluginInputError):
    """An adapter file cannot be made, read or applied; the message names the file."""


@dataclass
class Adapter:
    tensors: Dict[str, torch.Tensor]
    """Model state key -> tensor, every key of a shared tensor included (they share storage)."""
    metadata: Dict[str, str]

    @property
    def method(self) -> str:
        return self.metadata["method"]

    def trained_count(self) -> int:
        return sum(t.numel() for t in {t.data_ptr(): t for t in self.tensors.values()}.values())


def is_tuner_state_key(key: str) -> bool:
    """`...parametrizations.weight.0.<kind>.<name>.<state>` of a tuner kind."""
    head, found, rest = key.partition(TRANSFORM_STATE)
    return bool(found) and rest.split(".")[0] in TUNER_KINDS


def backbone_tensors(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The wav2vec2 tensors of a model state under their plain names (`encoder.layers.0.fc1.weight`),
    whether the state is a pretraining checkpoint's or a CTC run's (stored weights and biases under
    transforms taken as they are stored; transform state and the output layer left out)."""
    if not any(key.startswith(W2V_PREFIX) for key in state):
        return dict(state)
    plain = {}
    for key, value in state.items():
        if not key.startswith(W2V_PREFIX):
            continue
        name = key[len(W2V_PREFIX):]
        if name.endswith(_WEIGHT_ORIGINAL):
            name = name[: -len(_WEIGHT_ORIGINAL)] + ".weight"
        elif name.endswith(_BIAS_ORIGINAL):
            name = name[: -len(_BIAS_ORIGINAL)] + ".bias"
        elif ".parametrizations." in name:
            continue
        plain[name] = value
    return plain


def fingerprint(tensors: Mapping[str, torch.Tensor], names: List[str]) -> str:
    """sha256 over name, dtype, shape and bytes of `names` (sorted) in `tensors`."""
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def adapter_of_checkpoint(path: str) -> Adapter:
    """The adapter of a tuner run's checkpoint: the tuner's state, the output layer, and the
    metadata that makes it appliable."""
    checkpoint = load_fairseq_checkpoint(path)
    cfg = checkpoint.get("cfg") or {}
    model_cfg = cfg.get("model") or {}
    if not model_cfg.get("tuner"):
        raise AdapterError(f"{path}: holds no tuner (its model.tuner is unset); an adapter file holds what a "
                           "+model.tuner=... run trained")
    dictionary = (checkpoint.get("task_state") or {}).get("target_dictionary")
    if dictionary is None:
        raise AdapterError(f"{path}: holds no target dictionary (task_state)")
    state = checkpoint["model"]
    other = next((key for key in state if TRANSFORM_STATE in key and not is_tuner_state_key(key)), None)
    if other is not None:
        raise AdapterError(f"{path}: holds {other}, a transform that is no tuner's; an adapter file applies to an "
                           "unchanged backbone (bake other transforms in first: export, then model.init_from)")
    tensors = {key: value for key, value in state.items()
               if is_tuner_state_key(key) or key.startswith(STOCK_OUTPUT_LAYER_PREFIX)}
    backbone = backbone_tensors(state)
    names = sorted(backbone)
    metadata = {
        "format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "method": model_cfg["tuner"],
        "tuner": json.dumps({key: value for key, value in model_cfg.items() if key.startswith("tuner")}),
        "backbone_sha256": fingerprint(backbone, names), "backbone_tensors": json.dumps(names),
        "cfg": json.dumps(cfg), "dictionary": json.dumps(list(dictionary.symbols)), "aliases": "{}",
    }
    return Adapter(tensors=tensors, metadata=metadata)


def adapter_file_bytes(adapter: Adapter) -> bytes:
    """The safetensors bytes: each shared tensor stored once, its other keys listed as aliases."""
    stored: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    first_key: Dict[Tuple[int, int], str] = {}
    for key in sorted(adapter.tensors):
        tensor = adapter.tensors[key]
        identity = (tensor.data_ptr(), tensor.numel())
        if identity in first_key:
            aliases[key] = first_key[identity]
        else:
            first_key[identity] = key
            stored[key] = tensor.detach().contiguous().clone()
    metadata = {**adapter.metadata, "aliases": json.dumps(aliases)}
    return safetensors_bytes(stored, metadata=metadata)


def read_adapter_file(path: str) -> Adapter:
    """Reads and checks an adapter file; every problem names the file (and the metadata key)."""
    try:
        with safe_open(path, framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}
    except FileNotFoundError:
        raise AdapterError(f"{path}: no such adapter file") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"{path}: not an adapter file (not safetensors: {error})") from None
    if metadata.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{path}: not an adapter file (metadata format is {metadata.get('format')!r}, "
                           f"expected {ADAPTER_FORMAT!r}; make one with `fairseq-subnets adapters save`)")
    if metadata.get("version") != ADAPTER_VERSION:
        raise AdapterError(f"{path}: adapter file version {metadata.get('version')!r}; this fairseq-subnets reads "
                           f"version {ADAPTER_VERSION}")
    for key in METADATA_KEYS:
        if key not in metadata:
            raise AdapterError(f"{path}: metadata has no {key!r}")
    for key in ("tuner", "backbone_tensors", "cfg", "dictionary", "aliases"):
        try:
            json.loads(metadata[key])
        except json.JSONDecodeError:
            raise AdapterError(f"{path}: metadata {key!r} is not JSON") from None
    for alias, key in json.loads(metadata["aliases"]).items():
        if key not in tensors:
            raise AdapterError(f"{path}: alias {alias} names {key}, which the file does not hold")
        tensors[alias] = tensors[key]
    return Adapter(tensors=tensors, metadata=metadata)


def parametrized_modules(model_cfg: Mapping) -> Tuple[set, set]:
    """(modules whose weight, modules whose bias) the run's transform plan parametrizes, as
    wav2vec2-relative module paths."""
    weights, biases = set(), set()
    for entry in parse_plan(model_cfg.get("transform_plan"), "model.transform_plan"):
        for weight in entry["weights"]:
            module = weight[: -len(".weight")]
            weights.add(module)
            if getattr(TRANSFORM_KINDS.get(entry["kind"]), "changes_bias", False):
                biases.add(module)
    return weights, biases


def checkpoint_with_backbone(adapter: Adapter, adapter_path: str, backbone_path: str) -> dict:
    """The run's checkpoint, rebuilt from the adapter and the backbone in `backbone_path`."""
    backbone = backbone_tensors(load_fairseq_checkpoint(backbone_path)["model"])
    names = json.loads(adapter.metadata["backbone_tensors"])
    missing = [name for name in names if name not in backbone]
    if missing:
        raise AdapterError(f"{adapter_path}: made for another backbone: {backbone_path} has no {missing[0]}")
    found = fingerprint(backbone, names)
    if found != adapter.metadata["backbone_sha256"]:
        raise AdapterError(f"{adapter_path}: made for another backbone (sha256 {adapter.metadata['backbone_sha256'][:16]}"
                           f"...); {backbone_path} holds {found[:16]}...")
    cfg = json.loads(adapter.metadata["cfg"])
    weights, biases = parametrized_modules(cfg["model"])
    state = {}
    for name in names:
        module, _, tensor_name = name.rpartition(".")
        key = name
        if tensor_name == "weight" and module in weights:
            key = module + _WEIGHT_ORIGINAL
        elif tensor_name == "bias" and module in biases:
            key = module + _BIAS_ORIGINAL
        state[W2V_PREFIX + key] = backbone[name]
    state.update(adapter.tensors)
    return trainer_checkpoint(OmegaConf.create(cfg), state, "SubnetsCtcCriterion",
                              task_state={"target_dictionary": dictionary_of(adapter, adapter_path)})


def dictionary_of(adapter: Adapter, path: str) -> Dictionary:
    """The run's character dictionary from the stored symbols (fairseq's four special symbols,
    which every Dictionary begins with, then the file's)."""
    symbols = json.loads(adapter.metadata["dictionary"])
    dictionary = Dictionary()
    special = list(dictionary.symbols)
    if symbols[: len(special)] != special:
        raise AdapterError(f"{path}: metadata 'dictionary' does not start with fairseq's {', '.join(special)}")
    dictionary.add_from_file(io.StringIO("".join(f"{symbol} 1\n" for symbol in symbols[len(special):])))
    return dictionary


def tuned_state(path: str) -> Dict[str, torch.Tensor]:
    """The tuner state of an adapter file or of a checkpoint (told apart by torch.save's zip
    header), keyed as in the model."""
    with open(path, "rb") as handle:
        is_checkpoint = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    return load_fairseq_checkpoint(path)["model"] if is_checkpoint else read_adapter_file(path).tensors
