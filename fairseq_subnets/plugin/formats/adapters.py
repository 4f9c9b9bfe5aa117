"""Adapter files: just what a tuner run trained, applied to a backbone someone already has.

A tuner run (`+model.tuner=...`) changes nothing of the pretrained model: what it trained is the
tuner's parameters and the CTC output layer, a fraction of a percent of the checkpoint. An adapter
file holds exactly these (safetensors; shared tensors such as S2-LoRA's factors once) with, as
metadata, the method, its options, the run's config, the character dictionary and the backbone's
fingerprint: a sha256 over the names, dtypes, shapes and bytes of every wav2vec2 tensor the model
uses. Applying the file to a checkpoint holding that backbone (the pretraining checkpoint, or any
checkpoint of a run on it) rebuilds the run's checkpoint, which fairseq-generate decodes and
`export` merges; a backbone with another fingerprint is refused before anything is written.

The file's `sha256` metadata (version 2, the one written) covers every other metadata entry, names
and values, and every stored tensor's name, dtype, shape and bytes, so a flipped bit or an edited
option is caught on reading. The method and options shown (`adapters info`) and applied are both
read off the stored run config (`cfg`: `model.tuner` and the transform plan), never off a second
copy. Version 1 files (0.4.0) have no checksum: they are still read, as every structural check
below still holds for them, but `info` and `apply` say in one line that damage to their tensors
cannot be detected, and `adapters save` of the run's checkpoint gives a version 2 file.

Before `apply` writes, the rebuilt checkpoint must fit the model its config describes (every
tensor present, every shape, the dictionary's size against the output layer's rows), and the
written file must read back to the same state before it is renamed into place
(plugin.formats.checked_checkpoints).
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

from ...atomic import write_atomically
from ...core.transforms import TRANSFORM_KINDS, parse_plan
from ...techniques.tuners import TRANSFORM_STATE, TUNER_KINDS, tuner_trained_count
from ...errors import PluginInputError
from ...techniques.extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX
from .checkpoints import ZIP_MAGIC, load_fairseq_checkpoint, trainer_checkpoint

ADAPTER_FORMAT = "fairseq-subnets-adapter"
ADAPTER_VERSION = "2"
"""The version written."""
READABLE_VERSIONS = ("1", "2")
CHECKSUM_KEY = "sha256"
"""Absent from version 1 files, required in version 2 files."""
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
    def cfg(self) -> dict:
        """The run's config, the one source of the method and options that `apply` builds."""
        return json.loads(self.metadata["cfg"])

    @property
    def method(self) -> str:
        return self.cfg["model"]["tuner"]

    @property
    def checksummed(self) -> bool:
        return CHECKSUM_KEY in self.metadata

    def tuner_plan(self) -> List[dict]:
        """The transform plan entries of the tuner, as the rebuilt model will hold them: kind, the
        options it is built with (rank, alpha, ...) and how many matrices."""
        return [{"kind": entry["kind"], "options": entry["options"], "matrices": len(entry["weights"])}
                for entry in parse_plan(self.cfg["model"].get("transform_plan"), "cfg model.transform_plan")
                if entry["kind"] in TUNER_KINDS]

    def trained_count(self) -> int:
        return trained_parameter_count(self.tensors)


def trained_parameter_count(state: Mapping[str, torch.Tensor]) -> int:
    """What the optimizer of a tuner run trains, read off its checkpoint's or adapter file's state:
    the tuner's parameters (buffers left out, shared tensors once) and the CTC output layer."""
    return tuner_trained_count(state) + sum(tensor.numel() for key, tensor in state.items()
                                            if key.startswith(STOCK_OUTPUT_LAYER_PREFIX))


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
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
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
    metadata = {key: value for key, value in adapter.metadata.items() if key != CHECKSUM_KEY}
    metadata.update(version=ADAPTER_VERSION, aliases=json.dumps(aliases))
    metadata[CHECKSUM_KEY] = adapter_checksum(metadata, stored)
    return safetensors_bytes(stored, metadata=metadata)


def write_adapter_file(adapter: Adapter, path: str) -> None:
    """Writes the adapter file atomically, renaming it into place only once it reads back (checksum
    verified) to the same tensors and run config."""
    def check_written(temporary):
        written = read_adapter_file(temporary)
        same = (written.tensors.keys() == adapter.tensors.keys() and written.metadata["cfg"] == adapter.metadata["cfg"]
                and all(torch.equal(written.tensors[key], adapter.tensors[key]) for key in adapter.tensors))
        if not same:
            raise AdapterError(f"{path}: the written adapter file does not read back as written; nothing was written")

    write_atomically(path, adapter_file_bytes(adapter), check_written)


def adapter_checksum(metadata: Mapping[str, str], stored: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every metadata entry but the checksum itself (names and values, sorted) and
    every stored tensor (`fingerprint`: name, dtype, shape, bytes)."""
    entries = sorted((key, value) for key, value in metadata.items() if key != CHECKSUM_KEY)
    return hashlib.sha256(json.dumps([entries, fingerprint(stored, list(stored))]).encode()).hexdigest()


def is_adapter_file(path: str) -> bool:
    """Whether `path` is a safetensors file whose metadata names our adapter format (its header
    alone is read)."""
    try:
        with safe_open(path, framework="pt") as reader:
            return (reader.metadata() or {}).get("format") == ADAPTER_FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


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
    if metadata.get("version") not in READABLE_VERSIONS:
        raise AdapterError(f"{path}: adapter file version {metadata.get('version')!r}; this fairseq-subnets reads "
                           f"versions {', '.join(READABLE_VERSIONS)}")
    required = METADATA_KEYS + ((CHECKSUM_KEY,) if metadata["version"] != "1" else ())
    for key in required:
        if key not in metadata:
            raise AdapterError(f"{path}: metadata has no {key!r}")
    if CHECKSUM_KEY in required and adapter_checksum(metadata, tensors) != metadata[CHECKSUM_KEY]:
        raise AdapterError(f"{path}: damaged adapter file (checksum mismatch: its tensors or metadata changed "
                           "since it was written)")
    parsed = {}
    for key in ("tuner", "backbone_tensors", "cfg", "dictionary", "aliases"):
        try:
            parsed[key] = json.loads(metadata[key])
        except json.JSONDecodeError:
            raise AdapterError(f"{path}: metadata {key!r} is not JSON") from None
    check_one_truth(path, metadata, parsed)
    for alias, key in parsed["aliases"].items():
        if key not in tensors:
            raise AdapterError(f"{path}: alias {alias} names {key}, which the file does not hold")
        tensors[alias] = tensors[key]
    return Adapter(tensors=tensors, metadata=metadata)


def check_one_truth(path: str, metadata: Mapping[str, str], parsed: Mapping[str, object]) -> None:
    """The method and options are applied from the stored run config; the `method` and `tuner`
    entries repeat them for other readers and must agree with it (a version 1 file, which has no
    checksum, may have been edited in one place only)."""
    model_cfg = parsed["cfg"].get("model") if isinstance(parsed["cfg"], dict) else None
    if not isinstance(model_cfg, dict) or not model_cfg.get("tuner"):
        raise AdapterError(f"{path}: metadata 'cfg' holds no model.tuner")
    if metadata["method"] != model_cfg["tuner"]:
        raise AdapterError(f"{path}: metadata 'method' says {metadata['method']!r} but the run config it applies "
                           f"('cfg') trained {model_cfg['tuner']!r} (an edited file)")
    options = {key: value for key, value in model_cfg.items() if key.startswith("tuner")}
    if parsed["tuner"] != options:
        changed = sorted(key for key in set(options) | set(parsed["tuner"] or {})
                         if options.get(key) != (parsed["tuner"] or {}).get(key))
        raise AdapterError(f"{path}: metadata 'tuner' disagrees with the run config it applies ('cfg') at "
                           f"{changed[0] if changed else 'its layout'} (an edited file)")
    for entry in parse_plan(model_cfg.get("transform_plan"), f"{path}: metadata 'cfg' model.transform_plan"):
        if entry["kind"] in TUNER_KINDS and TUNER_KINDS[entry["kind"]] != model_cfg["tuner"]:
            raise AdapterError(f"{path}: metadata 'cfg' builds a {TUNER_KINDS[entry['kind']]} transform for "
                               f"model.tuner {model_cfg['tuner']!r} (an edited file)")


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


def apply_adapter(adapter: Adapter, adapter_path: str, backbone_path: str, out_path: str) -> None:
    """Writes the run's checkpoint rebuilt from the adapter and the backbone to `out_path`, once it
    fits the model its config describes: the dictionary's size against the output layer's rows,
    then every tensor and shape; the written file is read back before it is renamed into place."""
    from .checked_checkpoints import check_state_fits, model_of_config, write_checked_checkpoint

    checkpoint = checkpoint_with_backbone(adapter, adapter_path, backbone_path)
    dictionary = checkpoint["task_state"]["target_dictionary"]
    output_weight = adapter.tensors.get(STOCK_OUTPUT_LAYER_PREFIX + "weight")
    if output_weight is None:
        raise AdapterError(f"{adapter_path}: holds no output layer {STOCK_OUTPUT_LAYER_PREFIX}weight")
    if output_weight.shape[0] != len(dictionary):
        raise AdapterError(f"{adapter_path}: metadata 'dictionary' gives {len(dictionary)} symbols (fairseq's 4 "
                           f"special ones included) but the output layer {STOCK_OUTPUT_LAYER_PREFIX}weight has "
                           f"{output_weight.shape[0]} rows")
    model = model_of_config(checkpoint["cfg"], dictionary, adapter_path)
    check_state_fits(model, checkpoint["model"], adapter_path)
    write_checked_checkpoint(out_path, checkpoint, model)


def check_adapter_fits(adapter: Adapter, path: str) -> None:
    """The adapter's tensors are those of the tuner and output layer of the model its run config
    describes, key for key and shape for shape: what `apply` checks of the whole rebuilt checkpoint,
    for the readers that convert the adapter alone (`adapters export`)."""
    from .checked_checkpoints import check_tensors_fit, model_of_config

    model = model_of_config(adapter.cfg, dictionary_of(adapter, path), path)
    check_tensors_fit({key: value for key, value in model.state_dict().items()
                       if is_tuner_state_key(key) or key.startswith(STOCK_OUTPUT_LAYER_PREFIX)}, adapter.tensors, path)


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
