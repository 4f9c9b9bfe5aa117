"""Parameter-efficient tuners (core.tuners) on the frozen encoder: `+model.tuner=METHOD`.

The method's options are `model.tuner_<option>` (unset: the method's default, see each method's
config in core.tuners): `tuner_targets` / `tuner_layers` (the target matrices, as for masks),
`tuner_r`, `tuner_alpha`, AdaLoRA's `tuner_init_r`, `tuner_target_r`, `tuner_total_updates`
(the shipped configs set it to optimization.max_update), `tuner_warmup_updates`,
`tuner_final_updates`, `tuner_interval`, `tuner_beta1`, `tuner_beta2`,
`tuner_orthogonality_weight`, and S2-LoRA's `tuner_sparsity_weight` and `tuner_factor_weight`.

Every wav2vec2 weight is frozen; the tuner's parameters and the CTC output layer train, so the
optimizer holds only those. As under learned masks, fairseq's `freeze_finetune_updates` would run
the encoder without gradients and silently stop the tuner; the backbone is frozen anyway, so the
encoder runs with gradients from update 0 (extension.check_freezing).

AdaLoRA's allocator runs after every optimizer step, with the gradients of that step; its
importance averages are buffers of the transforms, so checkpoints hold them and a resumed run
allocates as an uninterrupted one. Gradients are all-reduced before the step, so every DDP rank
keeps the same triplets.
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Optional

from ...core.tuners import (
    TUNERS, TunerError, freeze_all_but_tuners, inject_tuner, tuner_config, tuner_parameters, tuner_transforms,
)
from ...core.tuners.adalora import allocate, svd_deltas
from ...errors import PluginInputError
from ..extension import STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX, Conflict, Technique, check_freezing

logger = logging.getLogger(__name__)

TUNER_OPTION_PREFIX = "tuner_"
TUNER_NAME = "tuner"
"""The transform name of the tuner the config adds (state keys `...<kind>.tuner.*`)."""


@dataclass
class TunerModelConfig:
    tuner: Optional[str] = field(
        default=None,
        metadata={"help": f"parameter-efficient fine-tuning on the frozen encoder: {', '.join(TUNERS)}; "
                  "the tuner and the CTC output layer train. Unset: no tuner"},
    )
    tuner_targets: Optional[str] = field(
        default=None, metadata={"help": "matrices the tuner adapts: q,k,v,out,fc1,fc2 or attn, ffn, all "
                                "(default: the method's: q,v for LoRA, alpha-LoRA and AdaLoRA; k,v,fc2 for IA3; "
                                "all otherwise)"})
    tuner_layers: Optional[str] = field(default=None, metadata={"help": "encoder layers adapted (default: all)"})
    tuner_r: Optional[int] = field(default=None, metadata={"help": "rank (default 8)"})
    tuner_alpha: Optional[float] = field(
        default=None, metadata={"help": "LoRA and AdaLoRA: the delta is scaled by alpha / r (default 8)"})
    tuner_init_r: Optional[int] = field(default=None, metadata={"help": "AdaLoRA: initial rank (default 12)"})
    tuner_target_r: Optional[int] = field(default=None, metadata={"help": "AdaLoRA: target rank (default 8)"})
    tuner_total_updates: Optional[int] = field(
        default=None, metadata={"help": "AdaLoRA: updates of the budget schedule; required (set it to "
                                "optimization.max_update, as the shipped configs do)"})
    tuner_warmup_updates: Optional[int] = field(
        default=None, metadata={"help": "AdaLoRA: updates at the initial budget before it shrinks (default 0)"})
    tuner_final_updates: Optional[int] = field(
        default=None, metadata={"help": "AdaLoRA: last updates at the target budget (default 0)"})
    tuner_interval: Optional[int] = field(
        default=None, metadata={"help": "AdaLoRA: updates between maskings while the budget shrinks (default 1)"})
    tuner_beta1: Optional[float] = field(
        default=None, metadata={"help": "AdaLoRA: smoothing of the sensitivity (default 0.85)"})
    tuner_beta2: Optional[float] = field(
        default=None, metadata={"help": "AdaLoRA: smoothing of the uncertainty (default 0.85)"})
    tuner_orthogonality_weight: Optional[float] = field(
        default=None, metadata={"help": "AdaLoRA: weight of the orthogonality term (default 0.5)"})
    tuner_sparsity_weight: Optional[float] = field(
        default=None, metadata={"help": "S2-LoRA: alpha1, weight of the mean L1 of the rank coefficients (default "
                                "0.05)"})
    tuner_factor_weight: Optional[float] = field(
        default=None, metadata={"help": "S2-LoRA: alpha2, weight of the factors' column and row norms (default 0.1)"})


def tuner_config_of(cfg):
    """The core tuner config the model config asks for (None without `model.tuner`); every error
    names the model config key."""
    method = cfg.get("tuner")
    if method is None:
        return None
    options = {key[len(TUNER_OPTION_PREFIX):]: cfg[key] for key in TunerModelConfig.__dataclass_fields__
               if key.startswith(TUNER_OPTION_PREFIX) and cfg.get(key) is not None}
    if method in TUNERS:
        foreign = sorted(set(options) - set(TUNERS[method].config.__dataclass_fields__))
        if foreign:
            takers = [m for m, tuner in TUNERS.items() if foreign[0] in tuner.config.__dataclass_fields__]
            raise PluginInputError(f"model.{TUNER_OPTION_PREFIX}{foreign[0]} is an option of {', '.join(takers)}; "
                                   f"model.tuner={method} does not take it")
        if method == "adalora" and "total_updates" not in options:
            raise PluginInputError("model.tuner=adalora needs model.tuner_total_updates, the updates of its budget "
                                   "schedule: set it to optimization.max_update (the shipped configs do)")
    try:
        return tuner_config(method, **options)
    except TunerError as error:
        raise PluginInputError(_config_key_message(str(error), method)) from None


def _config_key_message(message: str, method: str) -> str:
    """'lora.r: ...' -> 'model.tuner_r: ...'; 'tuner: ...' -> 'model.tuner: ...'."""
    message = re.sub(rf"^{re.escape(method)}\.", f"model.{TUNER_OPTION_PREFIX}", message)
    return re.sub(r"^tuner:", "model.tuner:", message)


class Tuners(Technique):
    """Adds a tuner from the config, freezes everything else but the output layer, and runs
    AdaLoRA's allocator after each optimizer step."""

    name = "tuners"
    config = TunerModelConfig
    conflicts = (Conflict("tuner", "score_sparsity", "a tuner and learned masks on one model are not supported; "
                          "train one, export it, and start the other from it with model.init_from"),)

    @classmethod
    def enabling_key(cls, cfg, task=None):
        return "tuner" if cfg.get("tuner") is not None else None

    @classmethod
    def check(cls, cfg):
        if tuner_config_of(cfg) is None:
            return
        check_freezing(cfg, f"model.tuner={cfg.tuner}", "the tuner")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tuner_config = tuner_config_of(cfg)

    def add_to_model(self, model, cfg):
        """Adds the configured tuner unless the model holds one already (rebuilt from a
        checkpoint's transform plan)."""
        if any(tuner_transforms(model, W2V_PREFIX)):
            return
        try:
            adapted = inject_tuner(model, self.tuner_config, W2V_PREFIX, TUNER_NAME)
        except TunerError as error:  # a target beyond the model, a second tuner on a weight
            raise PluginInputError(_config_key_message(str(error), self.tuner_config.method)) from None
        logger.info("tuner %s on %d matrices (%s)", self.tuner_config.method, len(adapted),
                    ", ".join(f"{k}={v}" for k, v in self.tuner_config.options().items() if k != "method"))

    def prepare_training(self, model, cfg):
        """Freezes all but the tuner and the output layer."""
        trainable = freeze_all_but_tuners(model, keep=lambda name: name.startswith(STOCK_OUTPUT_LAYER_PREFIX))
        tuned = sum(p.numel() for p in tuner_parameters(model).values())
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        logger.info("tuner %s trains %d parameters (%.4f%% of %d), plus the output layer; %d tensors in all",
                    self.tuner_config.method, tuned, 100.0 * tuned / total, total, len(trainable))
        return True

    def after_optimizer_step(self, model, updates_done, optimizer):
        """AdaLoRA: one allocator step (importance smoothing, masking to the scheduled budget)."""
        if self.tuner_config.method != "adalora":
            return
        from fairseq import metrics
        budget = allocate(self.tuner_config, svd_deltas(model, W2V_PREFIX), updates_done)
        metrics.log_scalar("adalora_budget", budget, weight=0, round=0)


TECHNIQUE = Tuners
