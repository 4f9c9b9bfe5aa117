"""The extension interface of `subnets_wav2vec_ctc`: what a technique declares, and the hooks the
model host calls on it.

A technique (fixed masks, learned masks, a tuner, ...) is a subclass of `Technique`. Its class
attributes are its declaration, read without building anything:
- `config`: the dataclass of its model config keys (the host's config is the union of all of them);
- `training_only_keys`: keys only training reads (files, schedules); a model rebuilt from a
  checkpoint gets what they made from the checkpoint itself, so the task clears them there;
- `recorded_keys`: keys the technique writes into the model config while the model is built, which
  fairseq saves in every checkpoint so that a rebuilt model has the same structure;
- `training_state_prefixes`: state-dict keys of training state (not weights), dropped when the
  checkpoint is decoded or exported by a model without the technique switched on;
- `decoding_only_keys`: keys that change only how a trained model decodes (sparse kernels); a
  training run refuses them when set to anything but their default (`refuse_decoding_only_keys`);
- `conflicts`: pairs of keys, one its own, that cannot be set together, each with the reason and
  the way out.

`enabling_key(cfg)` says whether the technique is on for a config (and which key turned it on);
`check(cfg)` refuses bad values before any checkpoint is read. The host then creates one instance
per model build for each technique that is on, and calls its hooks in the order of the registry
(`fairseq_subnets.techniques`). Every hook has a neutral default, so a technique implements only
what it changes.

Why data instead of mixins: with one mixin per technique, every new technique edited the model,
the task and the exclusion lists of its siblings. Here the host, the task and the conflict check
loop over whatever is registered.
"""
import logging
from dataclasses import dataclass, fields
from typing import ClassVar, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ..errors import PluginInputError

logger = logging.getLogger(__name__)

MODEL_KEY_PREFIX = "model."
"""How a model config key is named to the user (`+model.score_sparsity=...`)."""
W2V_PREFIX = "w2v_encoder.w2v_model."
"""Where the wav2vec2 model sits inside the host CTC model; mask and weight names are relative to it."""
STOCK_OUTPUT_LAYER_PREFIX = "w2v_encoder.proj."
"""The stock CTC output layer of the host model."""


@dataclass(frozen=True)
class Conflict:
    """Two model config keys that cannot be set together (one of them the technique's), and why:
    the reason says what to do instead."""

    key: str
    other_key: str
    reason: str


class RunSettings(NamedTuple):
    """The settings of the whole training run a technique may need before training starts
    (read from the full config above the task's)."""

    save_dir: Optional[str]
    max_update: Optional[int]
    lr_scheduler: Optional[str]


def is_set(value) -> bool:
    """Whether a config value asks for something: unset, false, zero and empty ask for nothing."""
    return value is not None and value is not False and value != 0 and value != "" and value != []


class Technique:
    """One technique, declared by its class attributes; an instance lives on one model."""

    name: ClassVar[str]
    config: ClassVar[type]
    training_only_keys: ClassVar[Tuple[str, ...]] = ()
    recorded_keys: ClassVar[Tuple[str, ...]] = ()
    training_state_prefixes: ClassVar[Tuple[str, ...]] = ()
    decoding_only_keys: ClassVar[Tuple[str, ...]] = ()
    conflicts: ClassVar[Tuple[Conflict, ...]] = ()

    @classmethod
    def enabling_key(cls, cfg, task=None) -> Optional[str]:
        """The config key that switches this technique on in `cfg` (None: it is off). `task` is
        the task building the model, when there is one (a technique may follow the task)."""
        raise NotImplementedError

    @classmethod
    def decoding_only_reason(cls, key: str, value) -> str:
        """Why a training run refuses `key` (one of `decoding_only_keys`) set to `value`, and what
        to do instead: the end of the refusal's line."""
        return (f"is a decoding setting, which a training run refuses: train without it and pass it when decoding "
                f"(fairseq-generate --model-overrides \"{{'{key}': '{value}'}}\")")

    @classmethod
    def check(cls, cfg) -> None:
        """Refuses bad values of the technique's keys, naming the key; called for every config
        before any checkpoint is read, also when the technique is off, so that a key set without
        the one that switches the technique on is refused rather than ignored."""

    @classmethod
    def check_files(cls, cfg, encoder_shapes: Mapping[str, Tuple[int, ...]], task=None) -> None:
        """Reads and checks the files the technique's keys name (mask files) against the encoder
        (`encoder_shapes`: model-relative weight name -> shape), called on a technique that is on
        before the model is built and before the upstream model is read, so a bad file is refused
        in a second, not after the upstream model (minutes at XLS-R size) has loaded."""

    def __init__(self, cfg):
        self.cfg = cfg

    # ---- building the model, in this order ----------------------------------------------------

    def add_structure(self, model: nn.Module, cfg, task) -> None:
        """Modules the checkpoint or the upstream model fills (per-language output layers): added
        before any weight is loaded."""

    def add_to_model(self, model: nn.Module, cfg) -> None:
        """Weight transforms and state, added once the starting weights are in place. A model
        rebuilt from its transform plan already holds its transforms: add only what is missing."""

    def prepare_training(self, model: nn.Module, cfg) -> bool:
        """Freezes what must not train, leaving trainable what other techniques on the model train
        (`trained_elsewhere`); returns whether something inside the encoder must learn from the
        first update (the host then lifts fairseq's `freeze_finetune_updates`)."""
        return False

    def trained_parameter_names(self, model: nn.Module) -> Set[str]:
        """Full names of the parameters the technique trains (scores, a tuner's factors), which a
        technique that freezes the backbone must leave trainable: two techniques that each freeze
        everything but their own parameters then combine."""
        return set()

    # ---- a training run ----------------------------------------------------------------------

    def prepare_run(self, model: nn.Module, settings: RunSettings) -> None:
        """Before training starts, with the run's settings: refuse a run that cannot work."""

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        """At the start of every training epoch."""

    def held_through_step(self, model: nn.Module) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(parameter, mask or None) pairs an optimizer step must leave bit-identical: the whole
        parameter (None) or where the mask is True (core.holding.unchanged_through)."""
        return []

    def after_optimizer_step(self, model: nn.Module, updates_done: int, optimizer) -> None:
        """After each optimizer step, with its gradients still present."""

    def writes_parameters_after_steps(self, model: nn.Module) -> bool:
        """Whether the technique writes parameters besides the optimizer (holding them through a
        step, rewinding them): fairseq's fp32 weight copies would overwrite that."""
        return False

    def regularisation_term_names(self, model: nn.Module) -> Tuple[str, ...]:
        """Loss terms the `subnets_ctc` criterion adds (criterion.regulariser_weights)."""
        return ()

    def regularisation_term(self, model: nn.Module, name: str) -> torch.Tensor:
        raise KeyError(name)

    # ---- the forward pass and the state ------------------------------------------------------

    def take_forward_inputs(self, model: nn.Module, net_input: Dict) -> None:
        """Removes from `net_input` what the stock forward pass does not take (a batch's
        language), acting on it."""

    def change_forward_output(self, model: nn.Module, net_output: Dict) -> Dict:
        return net_output

    def before_state_dict(self, model: nn.Module) -> None:
        """Makes derived state consistent before the model's state is read (checkpoints, export)."""

    def after_state_loaded(self, model: nn.Module, where: str) -> None:
        """Checks the loaded state against the configuration; `where` names the state's source."""

    def take_compact_matrices(self, model: nn.Module, matrices: Mapping[str, object]) -> Set[str]:
        """Before a compact checkpoint's state loads (plugin.formats.compact): takes over the coded
        matrices it can use without their dense weight (`core.compact.CompactMatrix` by full weight
        key) and returns their keys; the host rebuilds the dense weights of the rest."""
        return set()

    # ---- decoding ------------------------------------------------------------------------------

    def before_inference(self, model: nn.Module) -> None:
        """After fairseq-generate has cast and moved the loaded model (`--fp16`, the GPU) and
        before the first batch: refuse a decoding setting that cannot run there."""


def technique_of(model: nn.Module, technique: type) -> Optional[Technique]:
    """The instance of `technique` on a model built by the host, None when it is off."""
    for instance in getattr(model, "techniques", ()):
        if isinstance(instance, technique):
            return instance
    return None


def trained_elsewhere(model: nn.Module, technique: Technique) -> Set[str]:
    """The parameter names every other technique on the model trains (`trained_parameter_names`)."""
    return {name for other in getattr(model, "techniques", ()) if other is not technique
            for name in other.trained_parameter_names(model)}


def enabled_techniques(techniques: Sequence[type], cfg, task=None) -> List[Tuple[type, str]]:
    """(technique, the key that switched it on) for every technique on in `cfg`."""
    enabled = []
    for technique in techniques:
        key = technique.enabling_key(cfg, task)
        if key is not None:
            enabled.append((technique, key))
    return enabled


def check_model_config(techniques: Sequence[type], cfg, task=None) -> List[Tuple[type, str]]:
    """The one place where declared conflicts are enforced (before any technique's own checks, so
    a combination is refused as such) and every technique checks its keys; returns the techniques
    that are on. A conflict is one line naming both keys."""
    for technique in techniques:
        for conflict in technique.conflicts:
            if is_set(cfg.get(conflict.key)) and is_set(cfg.get(conflict.other_key)):
                raise PluginInputError(f"{MODEL_KEY_PREFIX}{conflict.key} with {MODEL_KEY_PREFIX}{conflict.other_key}: "
                                       f"{conflict.reason}")
    for technique in techniques:
        technique.check(cfg)
    return enabled_techniques(techniques, cfg, task)


def declared_keys(techniques: Iterable[type], attribute: str) -> Tuple[str, ...]:
    """The union, in registry order, of one declared key list (`training_only_keys`, ...)."""
    keys: List[str] = []
    for technique in techniques:
        keys.extend(key for key in getattr(technique, attribute) if key not in keys)
    return tuple(keys)


def refuse_decoding_only_keys(techniques: Iterable[type], cfg) -> None:
    """Refuses, in a training run, a decoding-only key set to anything but its default: it changes
    only how a trained model decodes, so in training it would either do nothing or change what
    validation measures."""
    for technique in techniques:
        defaults = {entry.name: entry.default for entry in fields(technique.config)}
        for key in technique.decoding_only_keys:
            value = cfg.get(key)
            if value is not None and value != defaults[key]:
                raise PluginInputError(f"{MODEL_KEY_PREFIX}{key}={value} {technique.decoding_only_reason(key, value)}")


def without_training_state(state_dict: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> Dict:
    """`state_dict` without the keys under `prefixes` (training state a decoder does not need)."""
    return {key: value for key, value in state_dict.items() if not key.startswith(tuple(prefixes))}


def check_masks_identical_across_ranks(digest: str) -> None:
    """Raises on every rank unless all ranks of the distributed run hold the mask with `digest`."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world_size = dist.get_world_size()
    mine = torch.tensor(list(bytes.fromhex(digest or "00" * 32)), dtype=torch.uint8)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    digests = [bytes(t.tolist()).hex() for t in gathered]
    if len(set(digests)) > 1:
        listing = ", ".join(f"rank {rank}: {d[:16]}" for rank, d in enumerate(digests))
        raise RuntimeError(f"distributed ranks hold different encoder masks ({listing})")
    logger.info("encoder masks identical on all %d ranks (sha256 %s)", world_size, digest[:16] or "none")


def check_freezing(cfg, method: str, learner: str) -> None:
    """For a technique that freezes the pretrained weights and trains something inside the encoder
    (`learner`): fairseq's freezing switches run the encoder without gradients, so `learner` would
    not learn; `method` names the technique in the message."""
    if cfg.freeze_encoder_epochs:
        raise PluginInputError(
            f"model.freeze_encoder_epochs={cfg.freeze_encoder_epochs} with {method}: a frozen epoch runs the "
            f"encoder without gradients, so {learner} would not learn in it; the pretrained weights are frozen "
            f"anyway under {method}: set it to 0")
    if cfg.freeze_finetune_updates and (cfg.get("score_train_biases") or cfg.get("score_train_layer_norms")):
        raise PluginInputError(
            f"model.freeze_finetune_updates={cfg.freeze_finetune_updates} with {method} and trainable biases "
            f"or layer norms: fairseq's freeze runs the encoder without gradients, which would also stop {learner}; "
            f"set model.freeze_finetune_updates=0 (or train only {learner})")
    if cfg.freeze_finetune_updates:
        logger.info("model.freeze_finetune_updates=%d: under %s the pretrained weights are frozen "
                    "throughout, so the encoder runs with gradients from update 0 and %s learn",
                    cfg.freeze_finetune_updates, method, learner)
