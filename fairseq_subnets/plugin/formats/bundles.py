"""Bundles: one frozen backbone serving many languages (S3-Router, Fu et al. 2022, Sec. 4.4).

Learned-mask runs of several languages on the same pretrained model change nothing but their
masks and output layers, so one copy of the backbone and, per language, a mask set, an output layer
and a dictionary reproduce all of them. A bundle is one fairseq checkpoint laid out as a
multilingual `subnets_wav2vec_ctc` model with per-language masks and per-language output layers
(the language_heads technique), so stock `fairseq-generate --task subnets_multilingual_finetuning
--decode-language LANG --path BUNDLE` decodes any of its languages, and `export --language` makes a
stock checkpoint of one. Each language's masks are stored as the bytes of a mask file (entropy
coded, core.maskfile) in a uint8 tensor `bundle_masks.<language>`; `expand_bundle_masks` turns them
into the per-language mask buffers of the model when a bundle is loaded.

The bundle's record of its languages (`checkpoint["bundle"]`: sources, dictionaries, storage) is
plain data, so bundles load with torch's weights-only loader like every other checkpoint.

As adapter files, bundles are checked end to end (version 2, the one written): the record's
`sha256` covers the config, the rest of the record and every tensor of the state (name, dtype,
shape, bytes), and the bundle commands verify it and the layout (each language's masks, which
carry their own checksum, its output layer, and its dictionary's size against that layer's rows)
before they use a bundle; so do fairseq-generate's `--path` (when our task is set up, before fairseq
reads the file) and `model.init_from` (before the model is built), through `checked_bundle`. A bundle is written only once it fits the multilingual model its config
describes, and read back before it is renamed into place (plugin.formats.checked_checkpoints). Version 1
bundles (0.4.0) have no checksum; they are still read, their layout still checked.
"""
import hashlib
import json
import os
from dataclasses import MISSING, dataclass, fields
from typing import Dict, List, Mapping

import torch
from omegaconf import OmegaConf

from ...component_names import PLUGIN_MULTILINGUAL_TASK
from ...core.maskfile import MaskFileError, checkpoint_fingerprint, mask_file_bytes, read_mask_bytes
from ...core.parametrize import masks_from_state_dict
from ...errors import PluginInputError
from ...techniques.extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX
from ...techniques.language_entries import parse_language_entries
from ...techniques.language_heads import HEADS_PREFIX, MULTILINGUAL_MODEL_KEYS
from ...techniques.learned_masks.layer import ScoreMask
from ...techniques.pathways.layer import LanguageMasks
from .checkpoints import load_fairseq_checkpoint, trainer_checkpoint

BUNDLE_MASKS_PREFIX = "bundle_masks."
BUNDLE_FORMAT = "fairseq-subnets-bundle"
BUNDLE_VERSION = 2
"""The version written; version 1 (no checksum) is still read."""
READABLE_VERSIONS = (1, 2)
MASKS_NAME = "bundle"
"""The transform name of the bundle's per-language masks (`...language_masks.bundle.<language>`)."""
PARAMETRIZED = ".parametrizations.weight."


class BundleError(PluginInputError):
    """A bundle cannot be built, changed or read; the message names the file and the language."""


@dataclass
class LanguageEntry:
    """What one language adds to the backbone."""

    masks: bytes
    head: Dict[str, torch.Tensor]
    dictionary: List[str]
    source: str
    source_fingerprint: str

    def head_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.head.values())


@dataclass
class Bundle:
    """A backbone (CTC-model state keys, masked weights under their stored `original` key, no
    output layer), the config of the run it came from, and the languages."""

    cfg: dict
    backbone: Dict[str, torch.Tensor]
    languages: Dict[str, LanguageEntry]
    checksummed: bool = True
    """False for a version 1 bundle as read: it had no checksum to verify."""

    def backbone_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.backbone.values())

    def masked_weights(self) -> List[str]:
        """Model-relative names of the weights the languages mask."""
        return sorted(f"{key[len(W2V_PREFIX):-len(PARAMETRIZED + 'original')]}.weight" for key in self.backbone
                      if key.endswith(PARAMETRIZED + "original"))


# ---- reading language runs -------------------------------------------------------------------


def parse_language_sources(entries) -> Dict[str, str]:
    """[LANGUAGE=CHECKPOINT, ...] -> {language: checkpoint}."""
    return parse_language_entries(entries, "=", "bundle", "LANGUAGE=CHECKPOINT")


def language_run(path: str, language: str):
    """(backbone, LanguageEntry) of one single-language learned-mask checkpoint."""
    checkpoint = load_fairseq_checkpoint(path)
    state, cfg = checkpoint["model"], checkpoint.get("cfg") or {}
    if (cfg.get("model") or {}).get("languages"):
        raise BundleError(f"{language}={path}: a multilingual checkpoint; a bundle takes single-language runs")
    try:
        masks = masks_from_state_dict(state, prefix=W2V_PREFIX)
    except ValueError as error:
        raise BundleError(f"{language}={path}: {error}") from None
    if not masks:
        raise BundleError(f"{language}={path}: holds no masks (train it with model.score_sparsity)")
    other = next((key for key in state if PARAMETRIZED in key and not key.endswith(PARAMETRIZED + "original")
                  and f"{PARAMETRIZED}0.{ScoreMask.kind}." not in key), None)
    if other is not None:  # a tuner's delta or a fixed mask under the learned masks: not a shared backbone
        raise BundleError(f"{language}={path}: holds {other}, a transform other than learned masks; a bundle shares "
                          "one unchanged backbone between languages (export the run with fairseq-subnets export "
                          "instead)")
    head = {key[len(STOCK_OUTPUT_LAYER_PREFIX):]: state[key].clone() for key in state
            if key.startswith(STOCK_OUTPUT_LAYER_PREFIX)}
    if not head:
        raise BundleError(f"{language}={path}: has no output layer {STOCK_OUTPUT_LAYER_PREFIX}*")
    dictionary = (checkpoint.get("task_state") or {}).get("target_dictionary")
    if dictionary is None:
        raise BundleError(f"{language}={path}: holds no target dictionary (task_state)")
    backbone = {}
    for key, value in state.items():
        if key.startswith(STOCK_OUTPUT_LAYER_PREFIX):
            continue
        if PARAMETRIZED in key and not key.endswith(PARAMETRIZED + "original"):
            continue  # the masks' own state (scores, counts): what the mask file holds
        backbone[key] = value
    metadata = {"method": "bundle", "language": language, "source": os.path.basename(path)}
    entry = LanguageEntry(masks=mask_file_bytes(masks, metadata), head=head, dictionary=list(dictionary.symbols),
                          source=path, source_fingerprint=checkpoint_fingerprint(path))
    return cfg, backbone, entry


def check_same_backbone(bundle: Bundle, backbone: Mapping[str, torch.Tensor], language: str, path: str) -> None:
    """Every language must run on the bundle's backbone, bit for bit, and mask the same weights."""
    if set(backbone) != set(bundle.backbone):
        extra = sorted(set(backbone) ^ set(bundle.backbone))[0]
        raise BundleError(f"{language}={path}: its model differs from the bundle's at {extra} (another "
                          "architecture, or masks on other weights)")
    for key, value in backbone.items():
        if value.shape != bundle.backbone[key].shape or not torch.equal(value, bundle.backbone[key]):
            raise BundleError(f"{language}={path}: {key} differs from the bundle's backbone (another pretrained "
                              "model, or weights trained with the masks); a bundle shares one frozen backbone")


# ---- the bundle checkpoint -------------------------------------------------------------------


def build_bundle(sources: Mapping[str, str]) -> Bundle:
    """A bundle of the given single-language runs; the first one's config describes the model."""
    bundle = None
    for language, path in sources.items():
        cfg, backbone, entry = language_run(path, language)
        if bundle is None:
            bundle = Bundle(cfg=cfg, backbone=backbone, languages={})
        else:
            check_same_backbone(bundle, backbone, language, path)
        bundle.languages[language] = entry
    if bundle is None:
        raise BundleError("name at least one LANGUAGE=CHECKPOINT")
    return bundle


def add_languages(bundle: Bundle, sources: Mapping[str, str]) -> None:
    for language, path in sources.items():
        if language in bundle.languages:
            raise BundleError(f"the bundle holds {language} already (remove it first)")
        _, backbone, entry = language_run(path, language)
        check_same_backbone(bundle, backbone, language, path)
        bundle.languages[language] = entry


def remove_languages(bundle: Bundle, languages, path: str) -> None:
    for language in languages:
        if language not in bundle.languages:
            raise BundleError(f"{path}: holds no language {language!r} ({', '.join(bundle.languages)})")
        if len(bundle.languages) == 1:
            raise BundleError(f"{path}: {language} is its last language; delete the file instead")
        del bundle.languages[language]


def bundle_checkpoint(bundle: Bundle) -> dict:
    """The fairseq checkpoint of a bundle: a multilingual model config with per-language masks on
    the masked weights and per-language output layers, its state, and the bundle record."""
    languages = list(bundle.languages)
    cfg = dict(bundle.cfg)
    model_cfg = dict(cfg.get("model") or {})
    model_cfg.update(
        languages=languages, language_output_layers="per_language",
        language_output_sizes=[len(bundle.languages[language].dictionary) for language in languages],
        transform_plan=json.dumps([{"kind": LanguageMasks.kind, "name": MASKS_NAME, "options": {"languages": languages},
                                    "weights": bundle.masked_weights()}]),
        score_sparsity=None, freeze_backbone=True,
    )
    cfg["model"] = model_cfg
    cfg["task"] = multilingual_task_config(cfg, languages)
    state = dict(bundle.backbone)
    for language, entry in bundle.languages.items():
        state[BUNDLE_MASKS_PREFIX + language] = torch.frombuffer(bytearray(entry.masks), dtype=torch.uint8)
        for key, value in entry.head.items():
            state[f"{HEADS_PREFIX}{language}.{key}"] = value
    record = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "languages": {
        language: {"source": entry.source, "source_fingerprint": entry.source_fingerprint,
                   "dictionary": entry.dictionary} for language, entry in bundle.languages.items()}}
    checkpoint = trainer_checkpoint(OmegaConf.create(cfg), state, "SubnetsCtcCriterion")
    record["sha256"] = bundle_checksum(checkpoint["cfg"], record, state)
    return {**checkpoint, "bundle": record}


def bundle_checksum(cfg: Mapping, record: Mapping, state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the config, the record but its own checksum, and every tensor of the state."""
    from .adapters import fingerprint

    described = json.dumps([cfg, {key: value for key, value in record.items() if key != "sha256"}],
                           sort_keys=True, default=str)
    return hashlib.sha256(json.dumps([described, fingerprint(state, list(state))]).encode()).hexdigest()


def multilingual_task_config(cfg: Mapping, languages: List[str]) -> dict:
    """The run's single-language task config as the multilingual task's: every key that task has
    (fairseq applies command-line overrides such as --decode-language only to keys a checkpoint's
    config holds), its interpolations (`${dataset.train_subset}`) resolved against the run's cfg."""
    from ..components.tasks import SubnetsMultilingualFinetuningConfig

    task = dict(cfg.get("task") or {})
    for option in fields(SubnetsMultilingualFinetuningConfig):
        if option.name in task:
            continue
        default = option.default if option.default is not MISSING else option.default_factory()
        if isinstance(default, str) and default.startswith("${"):
            section, key = default[2:-1].split(".")
            default = (cfg.get(section) or {}).get(key)
        task[option.name] = default
    task.update(_name=PLUGIN_MULTILINGUAL_TASK, languages=languages, decode_language=None,
                output_layers="per_language")
    return task


def write_bundle(bundle: Bundle, path: str) -> None:
    """Writes the bundle's checkpoint once its state fits the multilingual model its config
    describes; the written file is read back before it is renamed into place."""
    from fairseq.data import Dictionary

    from .checked_checkpoints import check_state_fits, model_of_config, write_checked_checkpoint

    checkpoint = bundle_checkpoint(bundle)
    first = next(iter(bundle.languages.values()))
    dictionary = Dictionary()
    for symbol in first.dictionary[len(dictionary.symbols):]:
        dictionary.add_symbol(symbol)
    model = model_of_config(checkpoint["cfg"], dictionary, path)
    check_state_fits(model, checkpoint["model"], path)
    write_checked_checkpoint(path, checkpoint, model)


def is_bundle(checkpoint) -> bool:
    return isinstance(checkpoint, dict) and (checkpoint.get("bundle") or {}).get("format") == BUNDLE_FORMAT


def bundle_dictionaries(checkpoint) -> Dict[str, List[str]]:
    """{language: dictionary symbols} of a bundle's record, as a multilingual run's task state
    records them; empty for any other checkpoint."""
    if not is_bundle(checkpoint):
        return {}
    return {language: list(info["dictionary"]) for language, info in checkpoint["bundle"]["languages"].items()}


def read_bundle(path: str) -> Bundle:
    checkpoint = load_fairseq_checkpoint(path)
    if not is_bundle(checkpoint):
        raise BundleError(f"{path}: not a bundle (build one with `fairseq-subnets bundles build`)")
    return checked_bundle(checkpoint, path)


def checked_bundle(checkpoint, path: str) -> Bundle:
    """The bundle a loaded bundle checkpoint holds, once its version, checksum and every
    language's entry are checked; every problem names `path` (the file, or the key that gave it)."""
    record = checkpoint["bundle"]
    if record.get("version") not in READABLE_VERSIONS:
        raise BundleError(f"{path}: bundle version {record.get('version')!r}; this fairseq-subnets reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}")
    state = checkpoint["model"]
    if record["version"] != 1 and bundle_checksum(checkpoint.get("cfg"), record, state) != record.get("sha256"):
        raise BundleError(f"{path}: damaged bundle (checksum mismatch: its tensors, config or record changed since "
                          "it was written)")
    languages = {}
    for language, info in record["languages"].items():
        head_prefix = f"{HEADS_PREFIX}{language}."
        languages[language] = LanguageEntry(
            masks=bytes(state[BUNDLE_MASKS_PREFIX + language].numpy().tobytes())
            if BUNDLE_MASKS_PREFIX + language in state else b"",
            head={key[len(head_prefix):]: value for key, value in state.items() if key.startswith(head_prefix)},
            dictionary=list(info["dictionary"]), source=info["source"], source_fingerprint=info["source_fingerprint"])
        check_language_entry(path, language, languages[language])
    strays = sorted(key for key in state if key.startswith(BUNDLE_MASKS_PREFIX)
                    and key[len(BUNDLE_MASKS_PREFIX):] not in record["languages"])
    if strays:
        raise BundleError(f"{path}: holds {strays[0]}, a language its record does not list")
    backbone = {key: value for key, value in state.items()
                if not key.startswith((BUNDLE_MASKS_PREFIX, HEADS_PREFIX))}
    cfg = dict(checkpoint["cfg"])
    cfg["model"] = {key: value for key, value in cfg["model"].items()
                    if key not in (*MULTILINGUAL_MODEL_KEYS, "transform_plan")}
    return Bundle(cfg=cfg, backbone=backbone, languages=languages, checksummed=record["version"] != 1)


def check_language_entry(path: str, language: str, entry: LanguageEntry) -> None:
    """One language of a bundle read back: its masks (a mask file, checksum and all), an output
    layer, and a dictionary whose size is that layer's rows."""
    if not entry.masks:
        raise BundleError(f"{path}: holds no {BUNDLE_MASKS_PREFIX}{language}, the masks of language {language}")
    try:
        read_mask_bytes(entry.masks, f"{path}: masks of {language}")
    except MaskFileError as error:
        raise BundleError(str(error)) from None
    weight = entry.head.get("weight")
    if weight is None:
        raise BundleError(f"{path}: holds no {HEADS_PREFIX}{language}.weight, the output layer of language {language}")
    if weight.shape[0] != len(entry.dictionary):
        raise BundleError(f"{path}: the record's dictionary of {language} holds {len(entry.dictionary)} symbols but "
                          f"its output layer {HEADS_PREFIX}{language}.weight has {weight.shape[0]} rows")


def expand_bundle_masks(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A bundle's model state with each language's embedded mask file decoded into the
    per-language mask buffers of the model (`...language_masks.bundle.<language>`); any other
    state dict comes back as it is."""
    embedded = [key for key in state_dict if key.startswith(BUNDLE_MASKS_PREFIX)]
    if not embedded:
        return state_dict
    expanded = {key: value for key, value in state_dict.items() if not key.startswith(BUNDLE_MASKS_PREFIX)}
    for key in embedded:
        language = key[len(BUNDLE_MASKS_PREFIX):]
        try:
            masks = read_mask_bytes(state_dict[key].numpy().tobytes(), f"bundle masks of {language}").masks
        except MaskFileError as error:
            raise BundleError(str(error)) from None
        for name, mask in masks.items():
            module = W2V_PREFIX + name[: -len(".weight")]
            expanded[f"{module}{PARAMETRIZED}0.{LanguageMasks.kind}.{MASKS_NAME}.{language}"] = mask
    return expanded


@dataclass
class LanguageStorage:
    language: str
    mask_bytes: int
    head_bytes: int
    backbone_fraction: float
    source: str


def storage(bundle: Bundle) -> List[LanguageStorage]:
    """What each language costs on top of the backbone: its mask file and output layer, in bytes
    and as a fraction of the backbone's bytes."""
    backbone = bundle.backbone_bytes()
    return [LanguageStorage(language, len(entry.masks), entry.head_bytes(),
                            (len(entry.masks) + entry.head_bytes()) / backbone, entry.source)
            for language, entry in bundle.languages.items()]
