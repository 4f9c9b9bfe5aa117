"""`subnets_wav2vec_ctc`: fairseq's wav2vec2 CTC model, the host of every technique.

With no technique switched on it is exactly the stock `wav2vec_ctc` model (same parameters, same
outputs from the same checkpoint). The techniques (fixed masks, learned masks, pathways,
per-language heads, tuners, iterative pruning: one folder each under `fairseq_subnets/techniques`)
declare their config keys, conflicts and hooks; the host's config is the stock one plus all their
keys, and the host calls the hooks of those that are on, in registry order, at build time, at each
step and epoch, in the forward pass and around state dicts. The host knows no technique by name.
Techniques change encoder weights through weight transforms (core.transforms), which act through
the weight tensors themselves, so fairseq's fused attention path honours them.

The model is rebuilt from its config: at build time it records which transforms it holds in
`transform_plan` (kinds, names, options, weights), which fairseq saves in every checkpoint's cfg.
A model rebuilt from a checkpoint (resume, fairseq-generate, export) creates the same transforms
from the plan, and the checkpoint fills their state. The transforms' state is in the model's state
dict, so nothing else is needed, even if a mask file has moved since.

Downstream fine-tuning (Storey et al. 2025) starts from a fine-tuned *upstream* CTC checkpoint
(`init_from`), which the stock model cannot do (its `w2v_path` must be a pretraining checkpoint):
the encoder comes from the upstream model, the output layer too when the character sets match,
and a fresh one otherwise. The upstream may be multilingual, and so may the run (plugin.formats.upstream).
`freeze_encoder_epochs` trains only the output layer for the first epochs; the stock
`freeze_finetune_updates` counts updates instead.
"""
import argparse
import json
import logging
from dataclasses import dataclass, field, make_dataclass
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
from omegaconf import DictConfig, OmegaConf, open_dict

from ...component_names import PLUGIN_CTC_MODEL
from ...core.compact import is_compact_state, read_compact_state
from ...core.parametrize import mask_state_digest, prepare_for_state
from ...core.targets import encoder_weight_shapes, parse_weight_name
from ...core.transforms import build_from_plan, parse_plan, transform_plan
from ...techniques import registered_techniques
from ...techniques.extension import (
    W2V_PREFIX, RunSettings, check_model_config, declared_keys, without_training_state,
)
from ..formats.bundles import checked_bundle, expand_bundle_masks, is_bundle
from ..formats.checkpoint_kinds import FINE_TUNED, PRETRAINING, read_checkpoint_of_kind
from ..formats.upstream import UpstreamCheckpointError, continued_state, output_layers, read_upstream
from .errors import PluginInputError, one_line_errors
from .time_masking import install_seeded_masking

logger = logging.getLogger(__name__)

OUTPUT_LAYER_CHOICES = ChoiceEnum(["auto", "keep", "new"])
FROZEN_FOREVER = 1 << 62
"""A `freeze_finetune_updates` value no run reaches: fairseq's own switch, held on by epoch."""
TECHNIQUES = registered_techniques()
HOST_TRAINING_ONLY_KEYS = ("init_from", "init_from_language")
HOST_RECORDED_KEYS = ("transform_plan", "w2v_args")
TRAINING_ONLY_MODEL_KEYS = HOST_TRAINING_ONLY_KEYS + declared_keys(TECHNIQUES, "training_only_keys")
"""Model keys that only training reads: files read when training starts, whose content a model
rebuilt from a checkpoint gets from the checkpoint's state (through its transform plan), so the
files may have moved; and schedules, whose results come back the same way. The task clears them
when it rebuilds a model from a checkpoint."""
RECORDED_MODEL_KEYS = HOST_RECORDED_KEYS + declared_keys(TECHNIQUES, "recorded_keys")
"""Model config keys the model writes while it is built. fairseq builds models from a merged
copy of `model_cfg`, so the task copies these back into `model_cfg`, the node checkpoints save:
a rebuilt model then has the same structure and needs no `w2v_path`."""
TRAINING_STATE_PREFIXES = declared_keys(TECHNIQUES, "training_state_prefixes")
WAV2VEC2_DEFAULTS = {key: getattr(Wav2Vec2Config, key)
                     for key in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim")}
"""The encoder sizes of a wav2vec2 config that leaves them unset."""


@dataclass
class HostConfig:
    transform_plan: Optional[str] = field(
        default=None,
        metadata={"help": "written by the plugin at build time and saved in checkpoints: which weight "
                  "transforms the model holds (JSON); models rebuilt from a checkpoint recreate them "
                  "from it. Leave unset."},
    )
    init_from: Optional[str] = field(
        default=None,
        metadata={"help": "fine-tuned CTC checkpoint (an upstream model) to start from: its architecture "
                  "and encoder weights, and its output layer per init_output_layer; w2v_path is then not read"},
    )
    init_output_layer: OUTPUT_LAYER_CHOICES = field(
        default="auto",
        metadata={"help": "with init_from: keep the upstream output layer, start a new one, or auto: keep it "
                  "exactly when the upstream character dictionary equals this task's (per language in a "
                  "multilingual run)"},
    )
    init_from_language: Optional[str] = field(
        default=None,
        metadata={"help": "with init_from a multilingual checkpoint and a single-language run: the language "
                  "this run continues (its output layer, and its masks if the checkpoint has per-language ones)"},
    )
    freeze_encoder_epochs: int = field(
        default=0,
        metadata={"help": "train only the output layer during the first N epochs (needs the "
                  "subnets_audio_finetuning task, which reports epochs to the model)"},
    )


SubnetsWav2Vec2CtcConfig = make_dataclass(
    "SubnetsWav2Vec2CtcConfig", [],
    bases=(Wav2Vec2CtcConfig, HostConfig, *(technique.config for technique in TECHNIQUES)))
"""The stock CTC config, the host's keys, and every registered technique's keys."""


@register_model(PLUGIN_CTC_MODEL, dataclass=SubnetsWav2Vec2CtcConfig)
class SubnetsWav2VecCtc(Wav2VecCtc):
    """The host: the stock CTC model, with each technique that is on for its config
    (`self.techniques`, in registry order) called at every hook."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.techniques = []
        self.languages = []
        """The languages the model serves (set by the language_heads technique; empty for one language)."""

    @classmethod
    def build_model(cls, cfg, task):
        enabled = check_model_config(TECHNIQUES, cfg, task)
        if cfg.freeze_encoder_epochs and not getattr(task, "reports_epochs_to_model", False):  # a stock task
            raise PluginInputError(
                f"model.freeze_encoder_epochs={cfg.freeze_encoder_epochs} needs task._name="
                "subnets_audio_finetuning, which tells the model when an epoch begins"
            )
        upstream = read_checkpoint_of_kind(
            cfg.init_from, FINE_TUNED, "model.init_from",
            "a pretraining checkpoint goes in model.w2v_path") if cfg.init_from else None
        if upstream is not None:
            if is_bundle(upstream):  # its checksum and languages, before a model is built to take its weights
                checked_bundle(upstream, f"model.init_from: {cfg.init_from}")
            with open_dict(cfg):
                cfg.w2v_args = upstream_encoder_config(upstream, cfg.init_from)
        encoder_cfg = check_pretraining_checkpoint(cfg) if cfg.w2v_args is None else cfg.w2v_args.get("model")
        encoder_shapes = encoder_weight_shapes_of(encoder_cfg or {})
        for technique, _ in enabled:
            technique.check_files(cfg, encoder_shapes, task)
        model = super().build_model(cfg, task)
        model.techniques = [technique(cfg) for technique, _ in enabled]
        for technique in model.techniques:
            technique.add_structure(model, cfg, task)
        if upstream is not None:
            model.load_upstream(upstream, cfg, task)
        build_from_plan(model, parse_plan(cfg.transform_plan, "model.transform_plan"), prefix=W2V_PREFIX)
        for technique in model.techniques:
            technique.add_to_model(model, cfg)
        model.record_transform_plan(cfg)
        model.freeze_encoder_epochs = cfg.freeze_encoder_epochs
        model.configured_freeze_updates = cfg.freeze_finetune_updates
        # What trains inside the encoder (scores, tuners) needs gradients from update 0; the backbone is frozen anyway.
        if any([technique.prepare_training(model, cfg) for technique in model.techniques]):
            model.configured_freeze_updates = model.w2v_encoder.freeze_finetune_updates = 0
        model.seeded_masking = install_seeded_masking(model.w2v_encoder.w2v_model)
        return model

    def record_transform_plan(self, cfg):
        """Writes the transforms the model now holds into its config (saved in checkpoints)."""
        plan = transform_plan(self, prefix=W2V_PREFIX)
        value = json.dumps(plan) if plan else None
        if isinstance(cfg, DictConfig):
            with open_dict(cfg):
                cfg.transform_plan = value
        else:  # a checkpoint's cfg as plain containers
            cfg["transform_plan"] = value

    def encoder_weight_shapes(self):
        """Model-relative prunable weight name -> shape of the (effective) weight."""
        w2v_model = self.get_submodule(W2V_PREFIX[:-1])
        return {f"{path}.weight": tuple(module.weight.shape) for path, module in w2v_model.named_modules()
                if parse_weight_name(f"{path}.weight") is not None}

    def load_upstream(self, checkpoint, cfg, task):
        """Starts from the upstream checkpoint cfg.init_from (plugin.formats.upstream): its encoder, masks
        baked in, and the output layers cfg.init_output_layer keeps."""
        upstream = read_upstream(checkpoint, cfg.init_from, cfg.init_from_language, bool(self.languages))
        state, kept = continued_state(self.state_dict(), output_layers(self, task), upstream, cfg.init_output_layer)
        torch.nn.Module.load_state_dict(self, state)
        if not self.languages:
            logger.info("started from %s: encoder and %s output layer", cfg.init_from, "its" if kept else "a new")
        else:
            new = [language for language in self.languages if language not in kept]
            logger.info("started from %s: encoder; output layers kept: %s; new: %s", cfg.init_from,
                        ", ".join(kept) or "none", ", ".join(new) or "none")

    # ---- the hooks the task calls (plugin.components.tasks) ----------------------------------------------

    def prepare_run(self, settings: RunSettings):
        for technique in self.techniques:
            technique.prepare_run(self, settings)

    def begin_epoch(self, epoch):
        """Freezes the encoder through fairseq's own switch while epoch <= freeze_encoder_epochs."""
        frozen = epoch <= self.freeze_encoder_epochs
        self.w2v_encoder.freeze_finetune_updates = FROZEN_FOREVER if frozen else self.configured_freeze_updates
        if self.freeze_encoder_epochs:
            logger.info("epoch %d: encoder %s", epoch, "frozen (output layer only)" if frozen else "trained")
        for technique in self.techniques:
            technique.begin_epoch(self, epoch)

    def held_through_step(self):
        return [held for technique in self.techniques for held in technique.held_through_step(self)]

    def after_optimizer_step(self, updates_done, optimizer):
        for technique in self.techniques:
            technique.after_optimizer_step(self, updates_done, optimizer)

    def writes_parameters_after_steps(self):
        """Whether a technique writes parameters besides the optimizer: fairseq's fp16 optimizer
        would overwrite that from its fp32 copies (plugin.components.tasks refuses it)."""
        return any(technique.writes_parameters_after_steps(self) for technique in self.techniques)

    def mask_digest(self):
        """sha256 of every mask the encoder's transforms hold (empty string when unmasked)."""
        return mask_state_digest(self, prefix=W2V_PREFIX)

    # ---- the regulariser hook (criterion subnets_ctc) -----------------------------------------

    def regularisation_term_names(self):
        return tuple(name for technique in self.techniques for name in technique.regularisation_term_names(self))

    def regularisation_term(self, name):
        for technique in self.techniques:
            if name in technique.regularisation_term_names(self):
                return technique.regularisation_term(self, name)
        raise KeyError(name)

    # ---- forward and state --------------------------------------------------------------------

    def forward(self, **kwargs):
        for technique in self.techniques:
            technique.take_forward_inputs(self, kwargs)
        net_output = super().forward(**kwargs)
        for technique in self.techniques:
            net_output = technique.change_forward_output(self, net_output)
        return net_output

    def state_dict(self, *args, **kwargs):
        for technique in self.techniques:
            technique.before_state_dict(self)
        return super().state_dict(*args, **kwargs)

    def take_compact_state(self, state_dict):
        """The state of a compact checkpoint (plugin.formats.compact) as the model loads it: each
        coded matrix a technique takes (sparse decoding under `on`) as the empty placeholder that
        replaced its weight, every other one rebuilt dense. The state says it is compact (its
        checksummed description); the config's `compact_checkpoint` is for the task, which checks
        the file before the model is built, and for training, which refuses it."""
        if not is_compact_state(state_dict):
            return state_dict
        plain, matrices = read_compact_state(state_dict, "the compact checkpoint")
        taken = set()
        for technique in self.techniques:
            taken |= technique.take_compact_matrices(self, {key: m for key, m in matrices.items() if key not in taken})
        for key, matrix in matrices.items():
            plain[key] = self.get_parameter(key) if key in taken else matrix.dense()
        return plain

    @one_line_errors
    def prepare_for_inference_(self, cfg):
        """fairseq-generate's call after casting and moving the loaded model: each technique may
        refuse a decoding setting that cannot run there (one line)."""
        for technique in self.techniques:
            technique.before_inference(self)
        super().prepare_for_inference_(cfg)

    @one_line_errors
    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Takes the fixed masks a checkpoint holds, also when this model was built with other ones
        or, for checkpoints older than transform plans, with none (kept-only storage is sized by
        its mask, so the mask must match first); 0.2 key names are upgraded; a bundle's embedded
        mask files are decoded (plugin.formats.bundles); the training state of techniques that are off
        here (a pruning run's checkpoint decoded) is left out. fairseq calls it outside our task's
        entry points, so a technique's refusal after loading (`after_state_loaded`) ends a fairseq
        command with one line here."""
        state_dict = prepare_for_state(self, expand_bundle_masks(self.take_compact_state(state_dict)), prefix=W2V_PREFIX)
        enabled = {type(technique) for technique in self.techniques}
        state_dict = without_training_state(state_dict, declared_keys(
            [technique for technique in TECHNIQUES if technique not in enabled], "training_state_prefixes"))
        result = super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        for technique in self.techniques:
            technique.after_state_loaded(self, "the checkpoint")
        return result


def upstream_encoder_config(upstream, path):
    """The wav2vec2 config the upstream model was built with (so w2v_path is not needed)."""
    try:
        return OmegaConf.create(upstream["cfg"]["model"]["w2v_args"])
    except (KeyError, TypeError, ValueError):
        raise UpstreamCheckpointError(
            f"model.init_from: {path} holds no cfg.model.w2v_args (the wav2vec2 config it was fine-tuned "
            "from), which fairseq writes into every fine-tuned checkpoint since its hydra configs"
        ) from None


def encoder_weight_shapes_of(encoder_cfg):
    """Model-relative prunable weight name -> shape for a wav2vec2 model config (a mapping; unset
    sizes are wav2vec2's defaults), as the built host's `encoder_weight_shapes` gives them."""
    def size(key):
        value = encoder_cfg.get(key)
        return WAV2VEC2_DEFAULTS[key] if value is None else int(value)

    return encoder_weight_shapes(size("encoder_layers"), size("encoder_embed_dim"), size("encoder_ffn_embed_dim"))


def check_pretraining_checkpoint(cfg):
    """Checks model.w2v_path before fairseq loads it, reading it without its weights: fairseq's
    own failures on the wrong file are an AttributeError (a fine-tuned checkpoint) and a bare
    assertion (a different normalization), neither naming the file. Returns the checkpoint's
    wav2vec2 model config (a mapping)."""
    start_from_upstream = "a fine-tuned model to start from goes in +model.init_from (model.w2v_path is then not read)"
    if not cfg.w2v_path:
        raise PluginInputError(
            f"model.w2v_path is not set: name a wav2vec2 pretraining checkpoint; {start_from_upstream}")
    checkpoint = read_checkpoint_of_kind(cfg.w2v_path, PRETRAINING, "model.w2v_path", start_from_upstream,
                                         weights=False)
    pretraining_cfg = checkpoint.get("cfg")
    if pretraining_cfg:  # fairseq's rule: the task's setting, else the model's
        encoder_cfg = pretraining_cfg.get("model") or {}
        normalized = (pretraining_cfg.get("task") or {}).get("normalize", encoder_cfg.get("normalize", False))
    else:  # a checkpoint from before fairseq's hydra configs
        encoder_cfg = vars(checkpoint.get("args") or argparse.Namespace())
        normalized = encoder_cfg.get("normalize", False)
    if bool(normalized) != bool(cfg.normalize):
        raise PluginInputError(
            f"model.w2v_path: {cfg.w2v_path} was pretrained with normalize={normalized}; fine-tune with "
            f"task.normalize={str(bool(normalized)).lower()} too (fairseq requires the same normalization)"
        )
    return encoder_cfg
