"""The tuners in fairseq: `+model.tuner=METHOD` on `subnets_wav2vec_ctc`.

The method's options are `model.tuner_<option>`, generated from the registered methods' config
fields (`tuner_option_fields`): one key per option name any method has, unset (None) meaning the
method's own default, and the help naming the methods that take it with their defaults. The keys
keep the names that shipped configs and earlier checkpoints use. A key the chosen method does not
take is refused; a check's error names the key the user set (`model.tuner_<option>`).

Every wav2vec2 weight is frozen; the tuner's parameters and the CTC output layer train, so the
optimizer holds only those, besides what another technique on the model trains (learned masks'
scores: the tuner's delta is an adaptation, so it applies before every mask, and a masked weight
of the adapted matrix is exactly 0). Pruning during training and group lasso act on the adapted
weight the same way. As under learned masks, fairseq's `freeze_finetune_updates` would run
the encoder without gradients and silently stop the tuner; the backbone is frozen anyway, so the
encoder runs with gradients from update 0 (extension.check_freezing).

A method's step after each optimizer step (AdaLoRA's allocator) runs with the gradients of that
step; AdaLoRA's importance averages are buffers of the transforms, so checkpoints hold them and a
resumed run allocates as an uninterrupted one. Gradients are all-reduced before the step, so every
DDP rank keeps the same triplets.
"""
import logging
import typing
from dataclasses import Field, field, fields, make_dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from ...errors import PluginInputError
from ..extension import (
    MODEL_KEY_PREFIX, STOCK_OUTPUT_LAYER_PREFIX, W2V_PREFIX, Technique, check_freezing, trained_elsewhere,
)
from .base import (
    Tuner, TunerError, freeze_all_but_tuners, option_default, option_help, tuner_parameters, tuner_transforms,
)
from .registry import TUNERS, inject_tuner, tuner_config

logger = logging.getLogger(__name__)

TUNER_OPTION_PREFIX = "tuner_"
TUNER_NAME = "tuner"
"""The transform name of the tuner the config adds (state keys `...<kind>.tuner.*`)."""
MAX_UPDATE_KEY = "optimization.max_update"


def plain_type(annotation) -> type:
    """`int` of `int` and of `Optional[int]`."""
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    return arguments[0] if typing.get_origin(annotation) is typing.Union and len(arguments) == 1 else annotation


def tuner_option_fields(tuners: Mapping[str, Tuner]) -> List[Tuple[str, object, Field]]:
    """The flat `tuner_<option>` fields (name, type, field) of every option of `tuners`: default
    None (unset: the method's default); the help gives each distinct help text with the methods
    that take the option and their defaults. An option two methods declare with different types
    is refused."""
    takers: Dict[str, List[Tuple[str, type, Field]]] = {}
    for method, tuner in tuners.items():
        for declared in fields(tuner.config):
            takers.setdefault(declared.name, []).append((method, tuner.config, declared))
    flat = []
    for name, declarations in takers.items():
        types = {plain_type(declared.type) for _, _, declared in declarations}
        if len(types) > 1:
            raise TypeError(f"tuner option {name!r} is declared with different types by "
                            f"{', '.join(method for method, _, _ in declarations)}")
        helps: Dict[str, List[str]] = {}
        for method, config, declared in declarations:
            default = option_default(declared)
            helps.setdefault(option_help(config, name), []).append(
                f"{method} {'required' if default is None else default}")
        text = "; ".join(f"{help_text} (default: {', '.join(methods)})" for help_text, methods in helps.items())
        flat.append((f"{TUNER_OPTION_PREFIX}{name}", Optional[types.pop()],
                     field(default=None, metadata={"help": f"{text}. Unset: the method's default"})))
    return flat


def option_names(config_class: type) -> Tuple[str, ...]:
    """The options a `tuner_*` config class declares, without the prefix."""
    return tuple(name[len(TUNER_OPTION_PREFIX):] for name in config_class.__dataclass_fields__
                 if name.startswith(TUNER_OPTION_PREFIX))


TunerModelConfig = make_dataclass("TunerModelConfig", [
    (TUNER_NAME, Optional[str], field(default=None, metadata={
        "help": f"parameter-efficient fine-tuning on the frozen encoder: {', '.join(TUNERS)}; the tuner and the "
                "CTC output layer train. Unset: no tuner"})),
    *tuner_option_fields(TUNERS),
])
"""`model.tuner` and the flat `model.tuner_<option>` keys of every registered method."""


def config_key(option_name: str) -> str:
    return f"{MODEL_KEY_PREFIX}{TUNER_OPTION_PREFIX}{option_name}"


def config_key_message(error: TunerError) -> str:
    """The error's message under the user's key (`model.tuner_<option>`)."""
    return error.message(None if error.option is None else config_key(error.option))


def tuner_config_of(cfg):
    """The tuner config the model config asks for (None without `model.tuner`); every error
    names the model config key."""
    method = cfg.get(TUNER_NAME)
    if method is None:
        return None
    if method not in TUNERS:
        raise PluginInputError(f"{MODEL_KEY_PREFIX}{TUNER_NAME}: unknown method {method!r} "
                               f"(known: {', '.join(TUNERS)})")
    options = {name: cfg[TUNER_OPTION_PREFIX + name] for name in option_names(TunerModelConfig)
               if cfg.get(TUNER_OPTION_PREFIX + name) is not None}
    foreign = sorted(set(options) - set(TUNERS[method].config.__dataclass_fields__))
    if foreign:
        takers = [m for m, tuner in TUNERS.items() if foreign[0] in tuner.config.__dataclass_fields__]
        raise PluginInputError(f"{config_key(foreign[0])} is an option of {', '.join(takers)}; "
                               f"{MODEL_KEY_PREFIX}{TUNER_NAME}={method} does not take it")
    try:
        return tuner_config(method, **options)
    except TunerError as error:
        raise PluginInputError(config_key_message(error)) from None


class Tuners(Technique):
    """Adds a tuner from the config, freezes everything else but the output layer, refuses
    options the run cannot honour, and runs the method's step after each optimizer step (AdaLoRA's
    allocator)."""

    name = "tuners"
    config = TunerModelConfig

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
        except TunerError as error:  # a target beyond the model, a rank above a matrix's, a second tuner
            raise PluginInputError(config_key_message(error)) from None
        logger.info("tuner %s on %d matrices (%s)", self.tuner_config.method, len(adapted),
                    ", ".join(f"{k}={v}" for k, v in self.tuner_config.options().items() if k != "method"))

    def prepare_training(self, model, cfg):
        """Freezes all but the tuner, the output layer and what other techniques on the model
        train (learned masks' scores)."""
        elsewhere = trained_elsewhere(model, self)
        trainable = freeze_all_but_tuners(
            model, keep=lambda name: name.startswith(STOCK_OUTPUT_LAYER_PREFIX) or name in elsewhere)
        tuned = sum(p.numel() for p in tuner_parameters(model).values())
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        logger.info("tuner %s trains %d parameters (%.4f%% of %d), plus the output layer; %d tensors in all",
                    self.tuner_config.method, tuned, 100.0 * tuned / total, total, len(trainable))
        return True

    def trained_parameter_names(self, model):
        return set(tuner_parameters(model))

    def prepare_run(self, model, settings):
        """Refuses options that cannot take effect in a run of optimization.max_update updates
        (an AdaLoRA schedule that ends after the run)."""
        try:
            self.tuner_config.check_run(settings.max_update, MAX_UPDATE_KEY)
        except TunerError as error:
            raise PluginInputError(config_key_message(error)) from None

    def after_optimizer_step(self, model, updates_done, optimizer):
        """The method's step after each optimizer step (AdaLoRA: its allocator), its values logged."""
        step = TUNERS[self.tuner_config.method].after_optimizer_step
        if step is None:
            return
        from fairseq import metrics
        for name, value in step(self.tuner_config, model, W2V_PREFIX, updates_done).items():
            metrics.log_scalar(name, value, weight=0, round=0)


TECHNIQUE = Tuners
