"""Parameter-efficient tuners on a frozen backbone, one folder per method (config: options, checks,
closed-form trainable count; layer: its weight transforms; model: putting it on a model; peft: its
PEFT form, where PEFT has one, `peft_form`), each registered by one line in `registry.METHODS`,
which is the list of methods.

Every tuner acts through weight transforms (`core.transforms`), so fairseq's fused attention sees
it, and merging is baking: `core.parametrize.bake_module` on a model, `bake_state_dict` on a bare
state dict. `unmerge_state_dict` takes merged weights back to the backbone where the method allows.
Importing this package registers every tuner's transform kinds. In fairseq, `+model.tuner=METHOD`
switches one on (`extension`). How to add a tuner: docs/techniques/tuners.md.
"""
from .base import (
    TUNER_KINDS, Tuner, TunerConfig, TunerError, freeze_all_but_tuners, target_modules, tuner_parameters,
    tuner_transforms,
)
from .extension import TECHNIQUE, Tuners, tuner_config_of
from .registry import METHODS, TUNERS, inject_tuner, target_shapes, tuner_config
from .state import TRANSFORM_STATE, rank_based_methods, tuner_ranks, tuner_trained_count, unmerge_state_dict

__all__ = ["METHODS", "TECHNIQUE", "TRANSFORM_STATE", "TUNERS", "TUNER_KINDS", "Tuner", "TunerConfig", "TunerError",
           "Tuners", "freeze_all_but_tuners", "inject_tuner", "rank_based_methods", "target_modules", "target_shapes", "tuner_config",
           "tuner_config_of", "tuner_parameters", "tuner_ranks", "tuner_trained_count", "tuner_transforms",
           "unmerge_state_dict"]
