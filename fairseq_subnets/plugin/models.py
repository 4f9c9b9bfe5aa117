"""`subnets_wav2vec_ctc`: fairseq's wav2vec2 CTC model, the carrier of masks and adapters.

With no transform configured it is exactly the stock `wav2vec_ctc` model (same parameters, same
outputs from the same checkpoint). Methods change encoder weights through weight transforms
(core.transforms: masks, learned scores, per-language masks; core.tuners: LoRA and the other
parameter-efficient tuners, `+model.tuner=...`, see plugin.tuners), which act through the weight
tensors themselves, so fairseq's fused attention path honours them. With `mask_path` the mask file
is applied after the pretrained weights are loaded, and pruned effective weights stay exactly zero.

The model is rebuilt from its config: at build time it records which transforms it holds in
`transform_plan` (kinds, names, options, weights), which fairseq saves in every checkpoint's cfg.
A model rebuilt from a checkpoint (resume, fairseq-generate, export) creates the same transforms
from the plan, and the checkpoint fills their state. The transforms' state is in the model's state
dict, so nothing else is needed, even if the mask file has moved since.

Downstream fine-tuning (Storey et al. 2025) starts from a fine-tuned *upstream* CTC checkpoint
(`init_from`), which the stock model cannot do (its `w2v_path` must be a pretraining checkpoint):
the encoder comes from the upstream model, the output layer too when the character sets match,
and a fresh one otherwise. The upstream may be multilingual, and so may the run (plugin.upstream).
`freeze_encoder_epochs` trains only the output layer for the first epochs; the stock
`freeze_finetune_updates` counts updates instead.
"""
import json
import logging
from dataclasses import dataclass, field, replace
from typing import List, Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
from omegaconf import DictConfig, OmegaConf, open_dict

from ..core.maskfile import MaskFileError, load_mask_file
from ..core.parametrize import (
    MASK_STORAGES, apply_language_masks, apply_masks, mask_state_digest, prepare_for_state,
)
from ..core.targets import TargetSelection, num_encoder_layers, parse_weight_name
from ..core.transforms import LanguageMasks, build_from_plan, parse_plan, stacks, transform_plan
from .bundles import expand_bundle_masks
from .checkpoint_kinds import FINE_TUNED, PRETRAINING, read_checkpoint_of_kind
from .errors import PluginInputError
from .iterative_pruning import (
    IterativePruningConfig, IterativePruningMixin, check_iterative_pruning_config, without_pruning_state,
)
from .language_heads import (
    HEADS_PREFIX, STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX, LanguageHeadsMixin, parse_language_entries,
)
from .learned_masks import LearnedMaskConfig, LearnedMasksMixin, check_learned_mask_config
from .tasks import SubnetsAudioFinetuningTask
from .time_masking import install_seeded_masking
from .tuners import TunerModelConfig, TunersMixin, check_tuner_config
from .upstream import SINGLE, OutputLayer, UpstreamCheckpointError, continued_state, read_upstream

logger = logging.getLogger(__name__)

OUTPUT_LAYER_CHOICES = ChoiceEnum(["auto", "keep", "new"])
MASK_STORAGE_CHOICES = ChoiceEnum(list(MASK_STORAGES))
MASK_SELECTION_KEYS = ("model.mask_targets", "model.mask_layers")
FROZEN_FOREVER = 1 << 62
"""A `freeze_finetune_updates` value no run reaches: fairseq's own switch, held on by epoch."""


@dataclass
class SubnetsWav2Vec2CtcConfig(Wav2Vec2CtcConfig, LearnedMaskConfig, TunerModelConfig, IterativePruningConfig):
    mask_path: Optional[str] = field(
        default=None,
        metadata={"help": "mask file (from `fairseq-subnets prune`) fixed on the encoder weights"},
    )
    mask_targets: Optional[str] = field(
        default=None,
        metadata={"help": "apply only these module kinds of the mask file (q,k,v,out,fc1,fc2,attn,ffn,all); "
                  "default: every mask in the file"},
    )
    mask_layers: Optional[str] = field(
        default=None, metadata={"help": "apply only these encoder layers of the mask file (e.g. 0-5); default: all"}
    )
    mask_storage: MASK_STORAGE_CHOICES = field(
        default="kept",
        metadata={"help": "kept: store and train only the kept weights (fastest; the mask never changes); "
                  "dense: full weights under a mask that may change in place during training"},
    )
    language_mask_files: Optional[List[str]] = field(
        default=None,
        metadata={"help": "per-language masks on shared encoder weights, one mask file per language of the "
                  "subnets_multilingual_finetuning task, as [LANGUAGE:PATH, ...]; each batch trains and decodes "
                  "under its language's mask. Every file must mask the same weights."},
    )
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
    languages: Optional[List[str]] = field(
        default=None,
        metadata={"help": "written at build time by the subnets_multilingual_finetuning task and saved in "
                  "checkpoints (see plugin.language_heads): the model's languages. Leave unset."},
    )
    language_output_layers: Optional[str] = field(
        default=None,
        metadata={"help": "written at build time with languages: per_language or shared. Leave unset."},
    )
    language_output_sizes: Optional[List[int]] = field(
        default=None,
        metadata={"help": "written at build time with languages: output size of each language's layer, or "
                  "of the shared one. Leave unset."},
    )


@register_model("subnets_wav2vec_ctc", dataclass=SubnetsWav2Vec2CtcConfig)
class SubnetsWav2VecCtc(LearnedMasksMixin, TunersMixin, IterativePruningMixin, LanguageHeadsMixin, Wav2VecCtc):
    @classmethod
    def build_model(cls, cfg, task):
        check_learned_mask_config(cfg)
        check_tuner_config(cfg)
        check_iterative_pruning_config(cfg)
        upstream = read_checkpoint_of_kind(
            cfg.init_from, FINE_TUNED, "model.init_from",
            "a pretraining checkpoint goes in model.w2v_path") if cfg.init_from else None
        if upstream is not None:
            with open_dict(cfg):
                cfg.w2v_args = upstream_encoder_config(upstream, cfg.init_from)
        elif cfg.w2v_args is None:
            check_pretraining_checkpoint(cfg)
        model = super().build_model(cfg, task)
        model.build_language_heads(cfg, task)
        if upstream is not None:
            model.load_upstream(upstream, cfg, task)
        build_from_plan(model, parse_plan(cfg.transform_plan, "model.transform_plan"), prefix=W2V_PREFIX)
        if cfg.mask_path:
            try:
                model.apply_mask_file(cfg.mask_path, cfg.mask_targets or "all", cfg.mask_layers or "all",
                                      storage=cfg.mask_storage)
            except MaskFileError as error:
                raise MaskFileError(f"model.mask_path: {error}") from None
        if cfg.language_mask_files:
            model.apply_language_mask_files(cfg.language_mask_files)
        model.add_learned_masks(cfg, W2V_PREFIX)
        model.add_tuner(cfg, W2V_PREFIX)
        model.add_iterative_pruning(cfg, W2V_PREFIX)
        model.record_transform_plan(cfg)
        if cfg.freeze_encoder_epochs and not isinstance(task, SubnetsAudioFinetuningTask):
            raise PluginInputError(
                f"model.freeze_encoder_epochs={cfg.freeze_encoder_epochs} needs task._name="
                "subnets_audio_finetuning, which tells the model when an epoch begins"
            )
        model.freeze_encoder_epochs = cfg.freeze_encoder_epochs
        model.configured_freeze_updates = cfg.freeze_finetune_updates
        # Scores and tuners need gradients from update 0; their backbone is frozen anyway.
        if model.prepare_learned_masks(cfg, W2V_PREFIX) or model.prepare_tuner():
            model.configured_freeze_updates = model.w2v_encoder.freeze_finetune_updates = 0
        model.seeded_masking = install_seeded_masking(model.w2v_encoder.w2v_model)
        return model

    def record_transform_plan(self, cfg):
        """Writes the transforms the model now holds into its config (saved in checkpoints).
        Methods that add transforms in build_model call this last."""
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

    def apply_mask_file(self, path, targets="all", layers="all", storage="kept"):
        """Fixes the selected masks of a mask file on the encoder (kept-only storage drops the
        pruned weights; dense storage keeps them under a mask that may change later)."""
        apply_masks(self, self.fitting_masks(path, targets, layers), prefix=W2V_PREFIX, storage=storage)

    def fitting_masks(self, path, targets="all", layers="all"):
        """The selected masks of a mask file, checked against this encoder's weights: every selected
        weight needs a mask, and every selected mask a weight, so a file for a deeper model is
        refused unless `layers` (model.mask_layers) leaves out the layers this model lacks; no mask
        is dropped unnoticed. targets=None selects exactly the weights the file masks."""
        model_shapes = self.encoder_weight_shapes()
        if targets is None:
            mask_file = load_mask_file(path)
            selected, chosen_masks = set(mask_file.masks), mask_file.masks
        else:
            try:
                selection = TargetSelection.parse(targets, layers, keys=MASK_SELECTION_KEYS)
                selected = set(selection.names(num_encoder_layers(model_shapes)))
            except ValueError as error:  # its message starts with the key
                raise PluginInputError(str(error)) from None
            mask_file = load_mask_file(path)
            chosen_masks = {name: mask for name, mask in mask_file.masks.items() if selection.selects(name)}
        chosen = replace(mask_file, masks=chosen_masks)
        chosen.check_against({name: shape for name, shape in model_shapes.items() if name in selected})
        return chosen.masks

    def apply_language_mask_files(self, entries):
        """One mask per language on the same shared weights (core LanguageMasks): every model
        language needs one, since each batch selects its language's mask."""
        files = parse_language_entries(entries, ":", "model.language_mask_files", "LANGUAGE:PATH")
        if not self.languages:
            raise PluginInputError("model.language_mask_files needs task._name=subnets_multilingual_finetuning, "
                                   "which tells the model each batch's language")
        if sorted(files) != sorted(self.languages):
            raise PluginInputError(f"model.language_mask_files has masks for {', '.join(files)}; the task trains "
                                   f"{', '.join(self.languages)}: give exactly one mask file per language")
        masks = {language: self.fitting_masks(path, targets=None) for language, path in files.items()}
        first_language, first_path = next(iter(files.items()))
        for language, path in files.items():
            if masks[language].keys() != masks[first_language].keys():
                raise PluginInputError(f"model.language_mask_files: {path} ({language}) masks other weights than "
                                       f"{first_path} ({first_language}); every language must mask the same weights")
        apply_language_masks(self, masks, prefix=W2V_PREFIX)

    def load_upstream(self, checkpoint, cfg, task):
        """Starts from the upstream checkpoint cfg.init_from (plugin.upstream): its encoder, masks
        baked in, and the output layers cfg.init_output_layer keeps."""
        upstream = read_upstream(checkpoint, cfg.init_from, cfg.init_from_language, bool(self.languages))
        state, kept = continued_state(self.state_dict(), self.output_layers(task), upstream, cfg.init_output_layer)
        torch.nn.Module.load_state_dict(self, state)
        if not self.languages:
            logger.info("started from %s: encoder and %s output layer", cfg.init_from, "its" if kept else "a new")
        else:
            new = [language for language in self.languages if language not in kept]
            logger.info("started from %s: encoder; output layers kept: %s; new: %s", cfg.init_from,
                        ", ".join(kept) or "none", ", ".join(new) or "none")

    def output_layers(self, task):
        """{language: OutputLayer} of this model for `task` (SINGLE for a single-language model)."""
        if not self.languages:
            return {SINGLE: OutputLayer(STOCK_OUTPUT_LAYER_PREFIX, tuple(task.target_dictionary.symbols))}
        per_language = len(self.language_heads) > 0
        return {language: OutputLayer(f"{HEADS_PREFIX}{language}." if per_language else STOCK_OUTPUT_LAYER_PREFIX,
                                      tuple(task.language_dictionaries[language].symbols))
                for language in self.languages}

    def begin_epoch(self, epoch):
        """Freezes the encoder through fairseq's own switch while epoch <= freeze_encoder_epochs."""
        frozen = epoch <= self.freeze_encoder_epochs
        self.w2v_encoder.freeze_finetune_updates = FROZEN_FOREVER if frozen else self.configured_freeze_updates
        if self.freeze_encoder_epochs:
            logger.info("epoch %d: encoder %s", epoch, "frozen (output layer only)" if frozen else "trained")

    def after_optimizer_step(self, updates_done, optimizer):
        """The task's hook after each optimizer step: AdaLoRA's allocator, pruning events."""
        self.allocate_tuner_ranks(updates_done)
        self.run_pruning_schedule(updates_done, optimizer)

    def writes_parameters_after_steps(self):
        """Whether the model writes parameters besides the optimizer (pathway updates hold weights,
        rewinding restores them): fairseq's fp16 optimizer would overwrite that from its fp32
        copies (plugin.tasks refuses it)."""
        has_language_masks = any(isinstance(transform, LanguageMasks) for _, _, stack in stacks(self)
                                 for _, _, transform in stack.transforms())
        rewinds = self.has_iterative_pruning() and self.pruning_rewind_update is not None
        return has_language_masks or len(self.language_heads) > 0 or rewinds

    def mask_digest(self):
        """sha256 of every mask the encoder's transforms hold (empty string when unmasked)."""
        return mask_state_digest(self, prefix=W2V_PREFIX)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Takes the fixed masks a checkpoint holds, also when this model was built with other ones
        or, for checkpoints older than transform plans, with none (kept-only storage is sized by
        its mask, so the mask must match first); 0.2 key names are upgraded; a bundle's embedded
        mask files are decoded (plugin.bundles)."""
        state_dict = prepare_for_state(self, expand_bundle_masks(state_dict), prefix=W2V_PREFIX)
        if not self.has_iterative_pruning():  # a pruning run's checkpoint decoded: its training state is not needed
            state_dict = without_pruning_state(state_dict)
        result = super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        if self.has_iterative_pruning():
            self.check_pruning_state("the checkpoint")
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


def check_pretraining_checkpoint(cfg):
    """Checks model.w2v_path before fairseq loads it, reading it without its weights: fairseq's
    own failures on the wrong file are an AttributeError (a fine-tuned checkpoint) and a bare
    assertion (a different normalization), neither naming the file."""
    start_from_upstream = "a fine-tuned model to start from goes in +model.init_from (model.w2v_path is then not read)"
    if not cfg.w2v_path:
        raise PluginInputError(
            f"model.w2v_path is not set: name a wav2vec2 pretraining checkpoint; {start_from_upstream}")
    checkpoint = read_checkpoint_of_kind(cfg.w2v_path, PRETRAINING, "model.w2v_path", start_from_upstream,
                                         weights=False)
    pretraining_cfg = checkpoint.get("cfg")
    if pretraining_cfg:  # fairseq's rule: the task's setting, else the model's
        normalized = (pretraining_cfg.get("task") or {}).get(
            "normalize", (pretraining_cfg.get("model") or {}).get("normalize", False))
    else:  # a checkpoint from before fairseq's hydra configs
        normalized = getattr(checkpoint.get("args"), "normalize", False)
    if bool(normalized) != bool(cfg.normalize):
        raise PluginInputError(
            f"model.w2v_path: {cfg.w2v_path} was pretrained with normalize={normalized}; fine-tune with "
            f"task.normalize={str(bool(normalized)).lower()} too (fairseq requires the same normalization)"
        )
