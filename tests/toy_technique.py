"""A technique that exists only for the tests: registered through FAIRSEQ_SUBNETS_TECHNIQUES (this
file's path), with a transform kind of its own, a config key, a declared conflict and a hook, and
nothing of the package edited. It scales each encoder layer's fc1 weight by a trainable scalar
(`+model.toy_scale=S`, its start value) and counts the optimizer steps it saw in a buffer, which is
training state (left out of exports)."""
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from fairseq_subnets.core.transforms import ADAPT, WeightTransform, add_transform, module_of, register_transform_kind, stack_of
from fairseq_subnets.errors import PluginInputError
from fairseq_subnets.techniques.extension import W2V_PREFIX, Conflict, Technique

TOY_TRANSFORM_NAME = "toy"
STEP_COUNTER = "toy_optimizer_steps"


@register_transform_kind
class ToyScale(WeightTransform):
    kind = "subnets_toy_scale"
    stage = ADAPT

    def __init__(self, scale: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, weight):
        return weight * self.scale

    @classmethod
    def placeholder(cls, shape, options):
        return cls(1.0)


@dataclass
class ToyConfig:
    toy_scale: Optional[float] = field(default=None, metadata={"help": "start value of the fc1 scales (tests only)"})


class Toy(Technique):
    name = "toy"
    config = ToyConfig
    training_state_prefixes = (STEP_COUNTER,)
    conflicts = (Conflict("toy_scale", "score_sparsity", "the toy technique trains no scores"),)

    @classmethod
    def enabling_key(cls, cfg, task=None):
        return "toy_scale" if cfg.get("toy_scale") is not None else None

    @classmethod
    def check(cls, cfg):
        if cfg.get("toy_scale") is not None and not cfg.toy_scale > 0:
            raise PluginInputError(f"model.toy_scale={cfg.toy_scale}: must be > 0")

    def add_to_model(self, model, cfg):
        for name in model.encoder_weight_shapes():
            module = module_of(model, name, W2V_PREFIX)
            stack = stack_of(module)
            if name.endswith(".fc1.weight") and (stack is None or stack.get(ToyScale.kind, TOY_TRANSFORM_NAME) is None):
                add_transform(module, TOY_TRANSFORM_NAME, ToyScale(cfg.toy_scale))
        model.register_buffer(STEP_COUNTER, torch.zeros((), dtype=torch.long))

    def after_optimizer_step(self, model, updates_done, optimizer):
        getattr(model, STEP_COUNTER).add_(1)


TECHNIQUE = Toy
