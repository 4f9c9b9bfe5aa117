"""Iterative magnitude pruning and lottery-ticket rewinding inside one stock training run, and
group lasso (ASR Pathways, Yang et al. 2023 Sec. 3.1 and 3.3).

`+model.pruning_interval=T` with `+model.pruning_target_sparsity=S` puts a dense mask (named
`pruning`, core `DenseMask`: full weights under a mask that changes in place, so Adam's state and
the optimizer's parameters stay) on every selected matrix (`pruning_targets` x `pruning_layers`).
After every T-th optimizer step, `pruning_fraction` (p) of the weights still kept are pruned by
`pruning_criterion` (magnitude, or blocks of `pruning_block` by L2 norm) over `pruning_scope`
(layer: the same sparsity in every matrix; global: all matrices ranked together), until S; then the
mask stays and training goes on (the schedule: schedule.py). IMP continues from the
current weights.

`pruning_rewind_update=K` makes it lottery-ticket rewinding (LTH): every parameter that trains is
copied at update K (0: the start of the run; K > 0: "late rewinding") into the model's rewind
point, and after every pruning event all of them go back to those values and Adam's state is
emptied. The learning-rate schedule restarts at each rewind under `lr_scheduler._name=
subnets_tri_stage` (see plugin.components.lr_schedules); a stock scheduler goes on and a warning says so.

`group_lasso_strength=G` adds the term `group_lasso` (criterion `subnets_ctc`, logged as
`regulariser_group_lasso`) over the blocks of the selected matrices; by default lambda_i = G / m_i
with m_i the mean kept-block norm at the start and after each event (`group_lasso_lambda`: the
rules of schedule.py). It is on
during dense training and the pruning events and off (0) once the target is reached; without a
pruning schedule it is on throughout.

On a model with a tuner (`model.tuner`) the schedule's masks lie over the tuner's delta (adaptations
apply before masks): events rank the adapted weight W + delta, a pruned effective weight is exactly
0 whatever the tuner learns, group lasso's gradient reaches the tuner's factors (the backbone is
frozen), and rewinding restores what trains, the tuner and the output layer. A fixed mask,
per-language masks and learned masks are refused with the schedule and with group lasso
(REFUSED_WITH says why).

Checkpoints hold the masks, the rewind point and the block norms; the schedule follows from the
update count, so a run killed between events resumes to the same masks. Every event logs the
sparsity overall and per layer, and in distributed training every rank checks that all ranks
hold the identical masks. The event that reaches the target writes the masks as the mask file
`pruned.mask` in the checkpoint folder.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch import nn

from ...component_names import PLUGIN_TRI_STAGE
from ...core.maskfile import save_mask_file
from ...core.pruning import BLOCK_METHODS, SCOPES, blocks_tile, parse_block, prune_within
from ...core.stats import sparsity_by
from ...core.targets import TargetSelection, num_encoder_layers
from ...core.transforms import DenseMask, add_transform, module_of, stack_of
from ...errors import PluginInputError
from ..extension import W2V_PREFIX, Conflict, Technique, check_masks_identical_across_ranks
from .schedule import (
    LAMBDA_RULES, PRUNING_CRITERIA, PRUNING_SCOPES, PruningSchedule, RewindPoint, group_lasso, group_lasso_strength,
    mean_kept_group_norm, pruning_method,
)

logger = logging.getLogger(__name__)

PRUNING_MASK_NAME = "pruning"
"""The transform name of the schedule's masks (state keys `...dense_mask.pruning.mask`)."""
PRUNING_SELECTION_KEYS = ("model.pruning_targets", "model.pruning_layers")
STATE_PREFIX = "iterative_pruning."
"""State-dict keys of the rewind point and the block norms: training state, left out by export."""
PRUNED_MASK_FILE = "pruned.mask"
GROUP_LASSO_TERM = "group_lasso"
REFUSED_WITH = {
    "mask_path": "the schedule's fraction and target sparsity count over whole matrices, and whether a fixed mask's "
                 "pruned weights count toward them is not decided; export the masked run (fairseq-subnets export) "
                 "and prune from it with model.init_from (its zeros then count)",
    "language_mask_files": "the schedule prunes one mask that every language shares, and per-language masks hold one "
                           "mask per language on the same weights; prune per language in separate runs",
    "score_sparsity": "learned masks freeze the weights, so the schedule would prune them by a ranking that never "
                      "changes; prune first (fairseq-subnets prune) and learn within that mask with model.mask_path",
}
"""Why each mask technique does not combine with the schedule or group lasso (a tuner does: its
delta comes before every mask, so the schedule prunes and group lasso shrinks the adapted weight)."""


@dataclass
class IterativePruningConfig:
    pruning_interval: Optional[int] = field(
        default=None,
        metadata={"help": "prune every T updates during training (IMP, Yang et al. 2023); needs "
                  "pruning_target_sparsity. Unset: no pruning during training"},
    )
    pruning_fraction: float = field(
        default=0.2, metadata={"help": "share p of the remaining weights pruned at each event, in (0, 1)"})
    pruning_target_sparsity: Optional[float] = field(
        default=None, metadata={"help": "sparsity at which pruning stops and the mask stays fixed, in (0, 1)"})
    pruning_criterion: str = field(
        default="magnitude", metadata={"help": "magnitude: |w| of each weight; block: L2 norm of pruning_block blocks"})
    pruning_scope: str = field(
        default="layer", metadata={"help": "layer: every matrix pruned to the same sparsity (the paper's choice); "
                                   "global: all selected matrices ranked together"})
    pruning_block: str = field(
        default="8x1", metadata={"help": "block of the block criterion and of group lasso: INPUTSxROWS, 8x1 = 8 "
                                 "consecutive weights of a row"})
    pruning_targets: str = field(
        default="all", metadata={"help": "prunable module kinds: q,k,v,out,fc1,fc2 or attn, ffn, all"})
    pruning_layers: str = field(default="all", metadata={"help": "prunable encoder layers, e.g. 0-5 (default: all)"})
    pruning_rewind_update: Optional[int] = field(
        default=None,
        metadata={"help": "lottery-ticket rewinding (LTH): after each pruning event every trained parameter goes "
                  "back to its value at this update (0: the start) and Adam's state is emptied. Unset: IMP"},
    )
    group_lasso_strength: Optional[float] = field(
        default=None,
        metadata={"help": "group lasso over the pruning_block blocks of the prunable matrices, lambda_i set by "
                  "group_lasso_lambda from this strength; unset or 0: off"},
    )
    group_lasso_lambda: str = field(
        default="reference",
        metadata={"help": "reference: lambda_i = strength / (mean kept-block norm of matrix i at the start and after "
                  "each pruning event); current: the same with the mean norm of every step (detached); constant: "
                  "lambda_i = strength"},
    )


def pruning_schedule_of(cfg) -> Optional[PruningSchedule]:
    """The configured schedule (None without `model.pruning_interval`); errors name the key."""
    if cfg.get("pruning_interval") is None:
        for key in ("pruning_target_sparsity", "pruning_rewind_update"):
            if cfg.get(key) is not None:
                raise PluginInputError(f"model.{key} needs model.pruning_interval (prune every T updates)")
        return None
    if cfg.get("pruning_target_sparsity") is None:
        raise PluginInputError("model.pruning_interval needs model.pruning_target_sparsity, the sparsity at which "
                               "pruning stops")
    try:
        return PruningSchedule(cfg.pruning_interval, cfg.pruning_fraction, cfg.pruning_target_sparsity)
    except ValueError as error:  # '<field>=...: ...'
        field_name = str(error).split("=", 1)[0]
        key = {"interval": "pruning_interval", "fraction": "pruning_fraction",
               "target_sparsity": "pruning_target_sparsity"}[field_name]
        raise PluginInputError(f"model.{key}{str(error)[len(field_name):]}") from None


class IterativePruningState(nn.Module):
    """The schedule's training state besides the masks: the rewind point and each pruned matrix's
    mean block norm m_i (group lasso), in the order of `names`."""

    def __init__(self, names):
        super().__init__()
        self.names = list(names)
        self.rewind_point = RewindPoint()
        self.register_buffer("mean_block_norms", torch.zeros(len(self.names), dtype=torch.float64))


PRUNING_CONFLICTS = tuple(Conflict(key, other, reason) for key in ("pruning_interval", "group_lasso_strength")
                          for other, reason in REFUSED_WITH.items())


class IterativePruning(Technique):
    """Adds the schedule's masks and state to the model, runs the pruning events after optimizer
    steps and contributes the group-lasso term."""

    name = "iterative_pruning"
    config = IterativePruningConfig
    training_only_keys = ("pruning_interval", "pruning_target_sparsity", "pruning_rewind_update",
                          "group_lasso_strength")
    training_state_prefixes = (STATE_PREFIX,)
    conflicts = PRUNING_CONFLICTS

    @classmethod
    def enabling_key(cls, cfg, task=None):
        if cfg.get("pruning_interval") is not None:
            return "pruning_interval"
        return "group_lasso_strength" if cfg.get("group_lasso_strength") else None

    @classmethod
    def check(cls, cfg):
        """Refuses bad pruning and group-lasso settings before any checkpoint is read."""
        schedule = pruning_schedule_of(cfg)
        strength = cfg.get("group_lasso_strength") or 0.0
        if not strength >= 0:
            raise PluginInputError(f"model.group_lasso_strength={strength}: must be >= 0 (0: off)")
        if schedule is None and not strength:
            return
        for key, choices in (("pruning_criterion", PRUNING_CRITERIA), ("pruning_scope", PRUNING_SCOPES),
                             ("group_lasso_lambda", LAMBDA_RULES)):
            if cfg[key] not in choices:
                raise PluginInputError(f"model.{key}={cfg[key]}: choose one of {', '.join(choices)}")
        try:
            parse_block(cfg.pruning_block)
        except ValueError as error:
            raise PluginInputError(f"model.pruning_block: {error}") from None
        try:
            TargetSelection.parse(cfg.pruning_targets, cfg.pruning_layers, keys=PRUNING_SELECTION_KEYS)
        except ValueError as error:  # its message starts with the key
            raise PluginInputError(str(error)) from None
        rewind = cfg.get("pruning_rewind_update")
        if rewind is not None and not 0 <= rewind < schedule.interval:
            raise PluginInputError(f"model.pruning_rewind_update={rewind}: the rewind point is taken before the first "
                                   f"pruning event, at an update in [0, model.pruning_interval={schedule.interval})")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.schedule = pruning_schedule_of(cfg)
        self.group_lasso_weight = float(cfg.get("group_lasso_strength") or 0.0)
        self.group_lasso_lambda = cfg.get("group_lasso_lambda", "reference")
        self.method = pruning_method(cfg.pruning_criterion, cfg.pruning_scope)
        self.block = parse_block(cfg.pruning_block)
        self.rewind_update = cfg.get("pruning_rewind_update")
        self.selection = TargetSelection.parse(cfg.pruning_targets, cfg.pruning_layers, keys=PRUNING_SELECTION_KEYS)
        self.mask_path = None
        self.sparsity = None

    def add_to_model(self, model, cfg):
        """Masks (unless the model was rebuilt with them from its transform plan) and state for
        the configured schedule and group lasso."""
        try:  # a layer group beyond the model
            names = self.selection.names(num_encoder_layers(model.encoder_weight_shapes()))
        except ValueError as error:  # its message starts with the key
            raise PluginInputError(str(error)) from None
        for name in names:
            module = module_of(model, name, W2V_PREFIX)
            if not blocks_tile(module.weight.shape, self.block):
                raise PluginInputError(f"model.pruning_block={cfg.pruning_block} does not tile {name} of shape "
                                       f"{tuple(module.weight.shape)}")
            stack = stack_of(module)
            if self.schedule is not None and (stack is None or stack.get(DenseMask.kind, PRUNING_MASK_NAME) is None):
                add_transform(module, PRUNING_MASK_NAME, DenseMask(torch.ones(module.weight.shape, dtype=torch.bool)))
        model.iterative_pruning = IterativePruningState(names)
        self.refresh_mean_block_norms(model)
        logger.info("%s%s on %d matrices", self.describe_schedule(),
                    f"; group lasso strength {self.group_lasso_weight:g}" if self.group_lasso_weight else "",
                    len(names))

    def prepare_training(self, model, cfg):
        """Takes the rewind point of update 0 once every technique has frozen what it freezes, so
        that it holds what trains (a tuner's factors and the output layer under a tuner)."""
        if self.rewind_update == 0:
            model.iterative_pruning.rewind_point.take(trained_parameters(model))
        return False

    def describe_schedule(self) -> str:
        schedule = self.schedule
        if schedule is None:
            return "no pruning"
        rewind = ("IMP (no rewinding)" if self.rewind_update is None
                  else f"LTH, rewinding to update {self.rewind_update}")
        return (f"pruning {self.method} every {schedule.interval} updates, {schedule.fraction:g} of the "
                f"remaining weights, to sparsity {schedule.target_sparsity:g} in {schedule.events} events (last at "
                f"update {schedule.final_update}), {rewind}")

    def pruned_matrices(self, model) -> Dict[str, nn.Module]:
        return {name: module_of(model, name, W2V_PREFIX) for name in model.iterative_pruning.names}

    def pruning_masks(self, model) -> Dict[str, DenseMask]:
        return {name: stack_of(module).get(DenseMask.kind, PRUNING_MASK_NAME)
                for name, module in self.pruned_matrices(model).items()}

    def kept_masks(self, model) -> Dict[str, torch.Tensor]:
        """The schedule's masks (all kept without a schedule: group lasso alone)."""
        if self.schedule is None:
            return {name: torch.ones(module.weight.shape, dtype=torch.bool, device=module.weight.device)
                    for name, module in self.pruned_matrices(model).items()}
        return {name: mask.kept() for name, mask in self.pruning_masks(model).items()}

    def refresh_mean_block_norms(self, model) -> None:
        kept = self.kept_masks(model)
        with torch.no_grad():
            for index, (name, module) in enumerate(self.pruned_matrices(model).items()):
                model.iterative_pruning.mean_block_norms[index] = mean_kept_group_norm(
                    module.weight, kept[name], self.block)

    def group_lasso_active(self, updates_done: int) -> bool:
        return bool(self.group_lasso_weight) and (
            self.schedule is None or updates_done < self.schedule.final_update)

    # ---- the regulariser hook (criterion subnets_ctc) ---------------------------------------------

    def regularisation_term_names(self, model):
        return (GROUP_LASSO_TERM,) if self.group_lasso_weight else ()

    def regularisation_term(self, model, name):
        """Group lasso over the effective (masked) weights while it is on, else 0."""
        if not self.group_lasso_active(model.w2v_encoder.num_updates):
            return torch.zeros(())
        matrices = self.pruned_matrices(model)
        if self.group_lasso_lambda == "current":
            kept = self.kept_masks(model)
            norms = [mean_kept_group_norm(module.weight, kept[name], self.block) for name, module in matrices.items()]
        else:
            norms = model.iterative_pruning.mean_block_norms.tolist()
        strengths = {name: torch.tensor(group_lasso_strength(self.group_lasso_weight, norm, self.group_lasso_lambda))
                     for name, norm in zip(matrices, norms)}
        return group_lasso({name: module.weight for name, module in matrices.items()}, strengths, self.block)

    # ---- the events ---------------------------------------------------------------------------

    def after_optimizer_step(self, model, updates_done, optimizer):
        """Takes a late rewind point, prunes at an event, rewinds."""
        from fairseq import metrics
        rewind_point = model.iterative_pruning.rewind_point
        if self.rewind_update and updates_done == self.rewind_update:
            rewind_point.take(trained_parameters(model))
            logger.info("update %d: rewind point taken (%d parameters)", updates_done, len(rewind_point.values()))
        if self.schedule is None:
            return
        event = self.schedule.event_at(updates_done)
        if event is None:
            metrics.log_scalar("pruning_sparsity", self.current_sparsity(model), weight=0, round=4)
            return
        masks = self.pruning_masks(model)
        with torch.no_grad():
            weights = {name: module.weight.detach() for name, module in self.pruned_matrices(model).items()}
            new = prune_within(weights, {name: mask.kept() for name, mask in masks.items()}, self.method,
                               self.schedule.sparsity_after(event), block=self.block)
        for name, mask in masks.items():
            mask.set_mask(new[name])
        if self.rewind_update is not None:
            rewind_point.rewind(trained_parameters(model))
            optimizer.optimizer.state.clear()
        self.refresh_mean_block_norms(model)
        self.log_pruning_event(event, updates_done, new)
        check_masks_identical_across_ranks(model.mask_digest())
        if event == self.schedule.events and self.mask_path:
            self.write_pruned_mask_file(new, updates_done)

    def writes_parameters_after_steps(self, model):
        return self.rewind_update is not None

    def current_sparsity(self, model) -> float:
        """The schedule's sparsity over all its matrices, logged at every update (counted from the
        masks once after a start or resume, then kept from the last event)."""
        if self.sparsity is None:
            self.sparsity = sparsity_by({name: mask.mask.cpu() for name, mask in self.pruning_masks(model).items()})[
                "total"]
        return self.sparsity

    def log_pruning_event(self, event, updates_done, masks) -> None:
        from fairseq import metrics
        by_layer = sparsity_by({name: mask.cpu() for name, mask in masks.items()}, "layer")
        total = self.sparsity = by_layer.pop("total")
        metrics.log_scalar("pruning_sparsity", total, weight=0, round=4)
        final = event == self.schedule.events
        logger.info("update %d: pruning event %d of %d: sparsity %.4f%s; per layer: %s%s", updates_done, event,
                    self.schedule.events, total, " (target reached; the mask is fixed from now on)"
                    if final else "", ", ".join(f"{layer} {value:.4f}" for layer, value in by_layer.items()),
                    "; rewound to the rewind point, optimizer state emptied"
                    if self.rewind_update is not None else "")

    def write_pruned_mask_file(self, masks, updates_done) -> None:
        """The final masks as a mask file beside the checkpoints (by rank 0 alone)."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        schedule = self.schedule
        metadata = {"method": self.method, "sparsity": schedule.target_sparsity,
                    "scope": SCOPES[self.method],
                    "block": f"{self.block[0]}x{self.block[1]}" if self.method in BLOCK_METHODS else "",
                    "targets": self.selection.targets_text(), "layers": self.selection.layers_text(),
                    "schedule": f"every {schedule.interval} updates, fraction {schedule.fraction:g}, "
                    f"{'IMP' if self.rewind_update is None else f'LTH rewinding to {self.rewind_update}'}",
                    "update": updates_done}
        save_mask_file(self.mask_path, {name: mask.cpu() for name, mask in masks.items()}, metadata)
        logger.info("pruned masks written to %s", self.mask_path)

    def after_state_loaded(self, model, where):
        """A checkpoint's masks must not be sparser than the target (masks made with a lower
        target): iterative pruning only removes more. Counted over all pruned matrices, since a
        global scope prunes some matrices past the target and others less, with one pruning unit
        (a block, or a weight) per matrix to spare: an event rounds each matrix's count to whole
        units, which can leave it just past the target."""
        if self.schedule is None:
            return
        masks = self.pruning_masks(model)
        unit = self.block[0] * self.block[1] if self.method in BLOCK_METHODS else 1
        kept = [mask.kept() for mask in masks.values()]
        pruned = sum(int((~mask).sum()) for mask in kept)
        total = sum(mask.numel() for mask in kept)
        target = self.schedule.target_sparsity
        if pruned > target * total + unit * len(masks):
            raise PluginInputError(f"{where}: its {len(masks)} pruned matrices are already at sparsity "
                                   f"{pruned / total:.4f}, beyond model.pruning_target_sparsity={target:g}; iterative "
                                   "pruning only removes more")

    def prepare_run(self, model, settings):
        """Where the final masks go; a run that would end before the last pruning event is refused;
        rewinding under a schedule that does not restart is warned about."""
        schedule = self.schedule
        if schedule is None:
            return
        if settings.max_update and settings.max_update < schedule.final_update:
            raise PluginInputError(
                f"optimization.max_update={settings.max_update} ends before the target sparsity: "
                f"{self.describe_schedule()}; raise optimization.max_update, or change model.pruning_interval / "
                "pruning_fraction / pruning_target_sparsity")
        if self.rewind_update is not None and settings.lr_scheduler not in (None, PLUGIN_TRI_STAGE):
            logger.warning("lr_scheduler %s goes on through the rewinds; subnets_tri_stage restarts at each one",
                           settings.lr_scheduler)
        if settings.save_dir:
            self.mask_path = os.path.join(settings.save_dir, PRUNED_MASK_FILE)


def trained_parameters(model):
    """(name, parameter) of every parameter that trains: what a rewind restores."""
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


TECHNIQUE = IterativePruning
