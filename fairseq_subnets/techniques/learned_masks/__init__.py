"""Learned masks on frozen weights (S3-Router, Fu et al. 2022).

`+model.score_sparsity=S` gives every selected encoder matrix (`score_targets` x `score_layers`,
FFN of every layer by default) a trainable score tensor (`ScoreMask`, layer.py), initialised by
`score_init` (scores.py) from the weights the model starts from, and freezes the whole wav2vec2
model except the scores: the pretrained weights stay bit-identical and what trains is the scores
and the CTC head (plus biases and layer norms when asked). The top-k runs per matrix, as in the
paper's code, or over all selected matrices together (`score_scope=global`).

Inside a fixed subnetwork (`model.mask_path`, the fixed-masks technique, applied first) each
score mask learns within the fixed mask of its matrix: the fixed mask's pruned weights stay exactly
0, and `score_sparsity` is the share of the fixed mask's *kept* weights that the learned mask
removes (ScoreMask's `within`; with the global scope, of all kept weights of the selected
matrices). The fixed mask is read from the weight's transform stack, whichever storage holds it.

A model rebuilt from a checkpoint (fairseq-generate, export) already holds its score masks from
the transform plan; the checkpoint then fills them, so no initialisation runs. A resumed run is
built from the training config, initialises as the first run did (fairseq seeds first) and then
loads the checkpoint's scores.

fairseq's `freeze_finetune_updates` runs the encoder under `no_grad`, which would stop the scores
from learning while the run looks healthy. Under learned masks the pretrained weights are frozen
anyway, so the encoder runs with gradients from the first update and the setting has nothing left
to freeze; with trainable biases or layer norms it would be ambiguous and is refused, as is
`freeze_encoder_epochs` (extension.check_freezing).
"""
import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from ...core.parametrize import masks_from_module
from ...core.pruning import pruned_count
from ...core.targets import TargetSelection, num_encoder_layers
from ...core.transforms import base_weight, module_of
from ...errors import PluginInputError
from ..extension import W2V_PREFIX, Conflict, Technique, check_freezing, trained_elsewhere
from .layer import SCORE_SCOPES, GlobalTopK, apply_score_masks, score_masks
from .scores import SCORE_INITS, initial_scores

logger = logging.getLogger(__name__)

SCORE_SELECTION_KEYS = ("model.score_targets", "model.score_layers")
LEARNED_MASK_NAME = "learned"
"""The transform name of the score masks the config adds (state keys `...score_mask.learned.*`)."""


@dataclass
class LearnedMaskConfig:
    score_sparsity: Optional[float] = field(
        default=None,
        metadata={"help": "learned masks on frozen weights (S3-Router): the fraction of each selected matrix's "
                  "weights removed (inside a fixed mask, model.mask_path: of the weights it keeps), strictly "
                  "between 0 and 1 (0.02-0.10 to fine-tune, 0.5-0.9 to prune). The "
                  "S3-Router code's prune_rate is the fraction kept: its prune_rate=0.9 is score_sparsity=0.1. "
                  "Unset: no learned masks"},
    )
    score_init: str = field(
        default="ori",
        metadata={"help": "initial scores: ori (random values in the order of |W|), wmi (|W|), ri (random)"},
    )
    score_targets: str = field(
        default="ffn", metadata={"help": "module kinds with learned masks: q,k,v,out,fc1,fc2 or attn, ffn, all"},
    )
    score_layers: str = field(
        default="all", metadata={"help": "encoder layers with learned masks, e.g. 0-5 or 0,3,5 (default: all)"},
    )
    score_scope: str = field(
        default="matrix",
        metadata={"help": "top-k per matrix (each matrix loses exactly score_sparsity of its weights, as in the "
                  "S3-Router code) or global (over all selected matrices together)"},
    )
    freeze_backbone: bool = field(
        default=False,
        metadata={"help": "freeze every wav2vec2 weight (learned masks do so anyway; bundles record it, so a "
                  "language decodes from a bundle with the very kernels its own run used)"},
    )
    score_train_biases: bool = field(
        default=False, metadata={"help": "with learned masks: also train the wav2vec2 model's biases"},
    )
    score_train_layer_norms: bool = field(
        default=False, metadata={"help": "with learned masks: also train the wav2vec2 model's layer norms"},
    )


ONE_TOP_K_PER_MATRIX = ("a learned mask runs one top-k per matrix, and per-language masks hold one mask per "
                        "language on it, so the kept weights it would learn within change with the batch; train "
                        "the learned mask within one language's mask (model.mask_path) instead")


class LearnedMasks(Technique):
    name = "learned_masks"
    config = LearnedMaskConfig
    conflicts = (Conflict("score_sparsity", "language_mask_files", ONE_TOP_K_PER_MATRIX),)

    @classmethod
    def enabling_key(cls, cfg, task=None):
        """On with learned masks, and with `freeze_backbone` alone (a frozen backbone under a head)."""
        if cfg.get("score_sparsity") is not None:
            return "score_sparsity"
        return "freeze_backbone" if cfg.get("freeze_backbone") else None

    @classmethod
    def check(cls, cfg):
        sparsity = cfg.score_sparsity
        if sparsity is None:
            return
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
            raise PluginInputError(
                f"model.score_sparsity={sparsity}: the fraction of weights removed must lie strictly between 0 and 1 "
                "(the S3-Router code's prune_rate is the fraction kept: prune_rate=0.9 is score_sparsity=0.1)")
        for key, value, choices in (("score_init", cfg.score_init, SCORE_INITS),
                                    ("score_scope", cfg.score_scope, SCORE_SCOPES)):
            if value not in choices:  # checked here, not by an enum, so that the error is one line
                raise PluginInputError(f"model.{key}={value}: choose one of {', '.join(choices)}")
        try:
            TargetSelection.parse(cfg.score_targets, cfg.score_layers, keys=SCORE_SELECTION_KEYS)
        except ValueError as error:  # its message starts with the key
            raise PluginInputError(str(error)) from None
        check_freezing(cfg, "learned masks", "the scores")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.global_top_k = None

    def add_to_model(self, model, cfg):
        """Adds score masks from the config unless the model holds some already (rebuilt from a
        checkpoint's transform plan)."""
        if cfg.score_sparsity is None or score_masks(model, W2V_PREFIX):
            return
        selection = TargetSelection.parse(cfg.score_targets, cfg.score_layers, keys=SCORE_SELECTION_KEYS)
        try:  # a layer group beyond the model
            names = selection.names(num_encoder_layers(model.encoder_weight_shapes()))
        except ValueError as error:  # its message starts with the key
            raise PluginInputError(str(error)) from None
        scores = {name: initial_scores(base_weight(module_of(model, name, W2V_PREFIX)), cfg.score_init)
                  for name in names}
        fixed = masks_from_module(model, W2V_PREFIX)  # the fixed subnetwork the top-k learns within
        within = {name: fixed[name] for name in names if name in fixed}
        added = apply_score_masks(model, scores, cfg.score_sparsity, prefix=W2V_PREFIX, name=LEARNED_MASK_NAME,
                                  scope=cfg.score_scope, within=within)
        if cfg.score_scope == "global":
            inside = sum(int(within[name].sum()) if name in within else scores[name].numel() for name in names)
            outside = sum(scores[name].numel() for name in names) - inside
            GlobalTopK(added).decide(total=outside + pruned_count(cfg.score_sparsity, inside))
        logger.info("learned masks (%s init, %s top-k) on %d matrices at sparsity %g%s", cfg.score_init,
                    cfg.score_scope, len(scores), cfg.score_sparsity,
                    f" of the weights the fixed mask keeps ({len(within)} matrices)" if within else "")

    def trained_parameter_names(self, model):
        """The scores, and the wav2vec2 model's biases and layer norms when asked."""
        w2v_model = model.get_submodule(W2V_PREFIX[:-1])
        layer_norm_parameters = {id(p) for m in w2v_model.modules() if isinstance(m, torch.nn.LayerNorm)
                                 for p in m.parameters(recurse=False)}
        return {W2V_PREFIX + name for name, parameter in w2v_model.named_parameters()
                if name.endswith(".scores")
                or (self.cfg.score_train_biases and name.endswith(".bias"))
                or (self.cfg.score_train_layer_norms and id(parameter) in layer_norm_parameters)}

    def prepare_training(self, model, cfg):
        """Freezes the wav2vec2 model around its score masks (or wholly, with `freeze_backbone`),
        leaving trainable what another technique on the model trains (a tuner), and sets up the
        global top-k; returns whether the model has learned masks (from the config
        or its transform plan). Frozen weights also matter outside training: torch's attention
        takes another kernel when no weight requires a gradient, which changes float rounding."""
        masks = score_masks(model, W2V_PREFIX)
        trained = self.trained_parameter_names(model) | trained_elsewhere(model, self)
        for name, parameter in model.get_submodule(W2V_PREFIX[:-1]).named_parameters():
            parameter.requires_grad_(W2V_PREFIX + name in trained)
        global_members = {name: mask for name, mask in masks.items() if mask.scope == "global"}
        if global_members:
            self.global_top_k = GlobalTopK(global_members)
            model.register_forward_pre_hook(lambda module, args: self.global_top_k.decide())
        return bool(masks)

    def before_state_dict(self, model):
        """Decides the global top-k, so that each matrix's stored pruned count belongs to the stored
        scores (tools that read a bare state dict, such as export, use them alone)."""
        if self.global_top_k is not None:
            self.global_top_k.decide()


TECHNIQUE = LearnedMasks
