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
"""
import io
import json
import os
from dataclasses import MISSING, dataclass, fields
from typing import Dict, List, Mapping

import torch
from omegaconf import OmegaConf

from ...atomic import write_atomically
from ...core.maskfile import MaskFileError, checkpoint_fingerprint, mask_file_bytes, read_mask_bytes
from ...core.parametrize import masks_from_state_dict
from .checkpoints import load_fairseq_checkpoint, trainer_checkpoint
from ...techniques.extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX
from ...techniques.language_entries import parse_language_entries
from ...techniques.language_heads import HEADS_PREFIX, MULTILINGUAL_MODEL_KEYS
from ...techniques.pathways.layer import LanguageMasks
from ...errors import PluginInputError

BUNDLE_MASKS_PREFIX = "bundle_masks."
BUNDLE_FORMAT = "fairseq-subnets-bundle"
BUNDLE_VERSION = 1
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
    return {**trainer_checkpoint(OmegaConf.create(cfg), state, "SubnetsCtcCriterion"), "bundle": record}


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
    task.update(_name="subnets_multilingual_finetuning", languages=languages, decode_language=None,
                output_layers="per_language")
    return task


def write_bundle(bundle: Bundle, path: str) -> None:
    buffer = io.BytesIO()
    torch.save(bundle_checkpoint(bundle), buffer)
    write_atomically(path, buffer.getvalue())


def is_bundle(checkpoint) -> bool:
    return isinstance(checkpoint, dict) and (checkpoint.get("bundle") or {}).get("format") == BUNDLE_FORMAT


def read_bundle(path: str) -> Bundle:
    checkpoint = load_fairseq_checkpoint(path)
    if not is_bundle(checkpoint):
        raise BundleError(f"{path}: not a bundle (build one with `fairseq-subnets bundles build`)")
    record = checkpoint["bundle"]
    if record.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {record.get('version')!r}; this fairseq-subnets reads "
                          f"version {BUNDLE_VERSION}")
    state = checkpoint["model"]
    languages = {}
    for language, info in record["languages"].items():
        head_prefix = f"{HEADS_PREFIX}{language}."
        languages[language] = LanguageEntry(
            masks=bytes(state[BUNDLE_MASKS_PREFIX + language].numpy().tobytes()),
            head={key[len(head_prefix):]: value for key, value in state.items() if key.startswith(head_prefix)},
            dictionary=list(info["dictionary"]), source=info["source"], source_fingerprint=info["source_fingerprint"])
    backbone = {key: value for key, value in state.items()
                if not key.startswith((BUNDLE_MASKS_PREFIX, HEADS_PREFIX))}
    cfg = dict(checkpoint["cfg"])
    cfg["model"] = {key: value for key, value in cfg["model"].items()
                    if key not in (*MULTILINGUAL_MODEL_KEYS, "transform_plan")}
    return Bundle(cfg=cfg, backbone=backbone, languages=languages)


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
