"""Weight transforms: any number of named changes stacked on one weight tensor.

Why through the tensor: fairseq's MultiheadAttention hands `q_proj.weight` etc. straight to
`F.multi_head_attention_forward` without calling the projections, so a change must alter what
`module.weight` returns. Each changed weight therefore holds exactly one `torch.nn.utils.parametrize`
parametrization, a `WeightStack`, whose children are the transforms. A transformed
`encoder.layers.0.fc1` has the state-dict keys

    encoder.layers.0.fc1.parametrizations.weight.original                 the stored base weight
    encoder.layers.0.fc1.parametrizations.weight.0.<kind>.<name>.<state>  each transform's state

The kind is part of the key, so a state dict alone says how to bake it (export, `init_from` and
`prune` need no model). `original` is the full base weight, except under a `fixed_mask`, which
stores only the kept weights (1-D, row-major): gradients, optimizer state and checkpoints then
cover the kept weights alone, and a pruned weight is zero by construction.

Order of application, whatever the order of registration:
  1. adaptations (deltas, scalings: anything mapping a weight to a changed weight), in the order
     they were added;
  2. masks, which multiply. A pruned effective weight is therefore exactly 0 whatever deltas exist.

Each kind is registered once (`register_transform_kind`) with its name, its state keys (its
buffers and parameters), how it is rebuilt (`placeholder` from the weight's shape and its
JSON-able `options()`, or `from_state` from a state dict) and how it bakes: the stack's forward
pass is the baking rule, so a baked weight equals the forward pass by construction.

Kinds provided here, the framework's own: `fixed_mask` (kept-only storage) and `dense_mask` (a
mask that changes in place during training: no new parameter, no optimizer rebuild; a mask file's
dense storage and the iterative pruning schedule use it). Each technique registers its own kinds
when its package `fairseq_subnets.techniques.<name>` is imported: `score_mask` (learned masks),
`language_masks` (pathways), the tuners' adapters. The core imports no technique, so code that
rebuilds or bakes a state dict holding them imports those packages first (the plugin imports them
all). A transform with one variant per language declares `languages` and `select`, so
`select_language` and per-language baking need no technique's class. An
adaptation that also changes the bias (IA3, GLoRA, BitFit) puts a stateless `BiasFollower` on the module's
bias (`<module>.parametrizations.bias.original` stores it), so fused attention sees that change
too; one transform may serve several weights with one tensor (`tie_shared_parameters`, S2-LoRA's
shared factors). Modules and transforms may also contribute named
regularisation terms (`regularisation_term_names` / `regularisation_term`), which the
`subnets_ctc` criterion adds to the loss.
"""
import itertools
import json
from typing import Callable, ClassVar, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

ADAPT, MASK = "adapt", "mask"
"""The two stages of a stack: adaptations apply first (in registration order), masks last."""

TRANSFORM_KINDS: Dict[str, type] = {}
"""kind name -> WeightTransform subclass; filled by `register_transform_kind`."""


class TransformError(ValueError):
    """A transform cannot be added, loaded or baked; the message names the weight or key."""


def register_transform_kind(cls):
    """Class decorator: makes a WeightTransform subclass known by its `kind` (once)."""
    if cls.kind in TRANSFORM_KINDS:
        raise ValueError(f"transform kind {cls.kind!r} is registered twice")
    if cls.stage not in (ADAPT, MASK):
        raise ValueError(f"transform kind {cls.kind!r}: stage must be {ADAPT!r} or {MASK!r}")
    TRANSFORM_KINDS[cls.kind] = cls
    return cls


def transform_kind(kind: str, where: str) -> type:
    """The registered class of `kind`; an unknown kind is refused naming `where` and the import
    that registers the techniques' kinds (the core cannot import them itself)."""
    if kind not in TRANSFORM_KINDS:
        raise TransformError(f"{where}: unknown kind {kind!r} (registered: {', '.join(sorted(TRANSFORM_KINDS))}); "
                             "a technique registers its kinds when its package fairseq_subnets.techniques.<name> "
                             "is imported, and importing fairseq_subnets.plugin imports them all")
    return TRANSFORM_KINDS[kind]


class WeightTransform(nn.Module):
    """One named change to a weight: `forward(weight) -> changed weight`. Subclasses set `kind`
    and `stage` and keep everything their forward pass needs in buffers and parameters (these are
    the state keys), so that a bare state dict bakes. They say how to rebuild themselves:
    `options()` (JSON-able: what shapes the state, e.g. the languages) with
    `placeholder(shape, options)`, the way a model config rebuilds them before a checkpoint fills
    their state, and `from_state`, the way a bare state dict is baked. A placeholder takes every
    value from `options` or the shape (a value it lacks is a TransformError, never a default)."""

    kind: ClassVar[str]
    stage: ClassVar[str]

    def options(self) -> Dict[str, object]:
        return {}

    @classmethod
    def placeholder(cls, shape: Tuple[int, ...], options: Mapping[str, object]) -> "WeightTransform":
        raise NotImplementedError

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], shape: Tuple[int, ...]) -> "WeightTransform":
        """Rebuilt from its own state entries (keys relative to the transform)."""
        transform = cls.placeholder(shape, cls.options_from_state(tensors))
        transform.load_state_dict(dict(tensors))
        return transform

    @classmethod
    def options_from_state(cls, tensors: Mapping[str, torch.Tensor]) -> Dict[str, object]:
        """The options that shape the state, read off the state itself (e.g. a rank)."""
        return {}

    def regularisation_term_names(self) -> Tuple[str, ...]:
        return ()

    def named_selection(self) -> Dict[str, torch.Tensor]:
        """What the transform keeps of what it could apply, by label: a mask's kept weights, the
        triplets AdaLoRA's allocator kept. The ranks of a distributed run must agree on all of it
        (`parametrize.mask_state_digest`); empty for a transform that selects nothing."""
        return {}

    def eval_token(self) -> Tuple:
        """What the transform's output depends on besides the weight, for the stack's eval-mode
        cache: its tensors' storage and in-place version (subclasses add Python state)."""
        return tuple((tensor.data_ptr(), tensor._version)
                     for tensor in itertools.chain(self.parameters(recurse=False), self.buffers(recurse=False)))

    def weight_shape(self) -> Optional[Tuple[int, ...]]:
        """The weight shape this transform was built for (None: fits any)."""
        return None

    changes_bias: ClassVar[bool] = False
    """True for adaptations that also change the module's bias (IA3 on outputs, GLoRA): adding one
    puts a `BiasFollower` on the bias, which asks `adapt_bias` for the effective bias."""

    bias_reads_weight: ClassVar[bool] = False
    """True where `adapt_bias` uses the base weight (GLoRA's W C): only then is it fetched."""

    def adapt_bias(self, bias: torch.Tensor, base_weight: torch.Tensor) -> torch.Tensor:
        """The bias this transform makes of `bias`, given the module's stored base weight."""
        return bias

    def unmerge(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight this transform's forward pass made `weight` of (merging undone)."""
        raise TransformError(f"{self.kind}: a merged weight cannot be taken back to the backbone")

    def unmerge_bias(self, bias: torch.Tensor, base_weight: torch.Tensor) -> torch.Tensor:
        """The bias `adapt_bias` made `bias` of, given the (unmerged) base weight."""
        if self.changes_bias:
            raise TransformError(f"{self.kind}: a merged bias cannot be taken back to the backbone")
        return bias

    languages: Tuple[str, ...] = ()
    """The languages a per-language transform holds one variant for, one of them active at a time
    (`select_language`); empty for a transform that acts alike for every language. The core bakes
    and reads masks per language through this alone, whichever technique defines the kind."""

    def select(self, language: str) -> None:
        """Makes `language`'s variant the active one (called only where `languages` is not empty)."""
        raise NotImplementedError

    shared_tensor_names: ClassVar[Tuple[str, ...]] = ()
    """Parameters that one tensor serves for several transforms (S2-LoRA's shared factors)."""

    def sharing_key(self) -> Optional[Tuple]:
        """Transforms of one name with the same key hold the same tensors under
        `shared_tensor_names` (`tie_shared_parameters`); None: shares nothing."""
        return None


class MaskTransform(WeightTransform):
    """A transform that multiplies the weight by a 0/1 mask (`kept()`, True = kept)."""

    stage = MASK

    def kept(self) -> torch.Tensor:
        raise NotImplementedError

    def named_kept(self) -> Dict[str, torch.Tensor]:
        """Every mask this transform can apply, by label (one, except per-language masks)."""
        return {"": self.kept()}

    def named_selection(self) -> Dict[str, torch.Tensor]:
        return self.named_kept()


def cached_multiplier(owner: nn.Module, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`mask` in the weight's dtype and device, cached on `owner._multiplier` (reset it to None
    whenever the mask changes)."""
    multiplier = owner._multiplier
    if multiplier is None or multiplier.dtype != weight.dtype or multiplier.device != weight.device:
        multiplier = owner._multiplier = mask.to(device=weight.device, dtype=weight.dtype)
    return multiplier


class _CachedFloatMask(MaskTransform):
    """A bool `mask` buffer (the state) and, made on first use, its copy in the weight's dtype,
    which the forward pass multiplies by: multiplying is several times faster than a boolean
    `torch.where` on CPU. The copy is not a buffer, so a fixed mask that never multiplies (the
    kept-only fast path) costs 1 byte per weight, not 5."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())
        self._multiplier: Optional[torch.Tensor] = None

    def _refresh(self) -> None:
        self._multiplier = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * cached_multiplier(self, self.mask, weight)

    def kept(self) -> torch.Tensor:
        return self.mask.clone()

    def weight_shape(self):
        return tuple(self.mask.shape)

    @classmethod
    def placeholder(cls, shape, options):
        return cls(torch.ones(shape, dtype=torch.bool))

    @classmethod
    def from_state(cls, tensors, shape):
        return cls(tensors["mask"])


@register_transform_kind
class FixedMask(_CachedFloatMask):
    """A mask fixed for the whole run, with kept-only storage: the stack it sits on stores only
    the kept weights, so pruned weights cost no gradient, no optimizer state and no checkpoint
    space (this is what keeps a masked training step close to an unmasked one). Changing the mask
    means new storage (`replace_fixed_mask`): build optimizers after fixing masks. At most one per
    weight."""

    kind = "fixed_mask"

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask)
        self.register_buffer("kept_index", _flat_kept_index(self.mask), persistent=False)

    def _refresh(self) -> None:
        super()._refresh()
        self.kept_index = _flat_kept_index(self.mask)

    def expand(self, kept_weights: torch.Tensor) -> torch.Tensor:
        """The full weight: kept values in place, exact zeros elsewhere. In place into fresh zeros,
        so the backward pass is one index_select."""
        full = kept_weights.new_zeros(self.mask.numel())
        return full.index_copy_(0, self.kept_index, kept_weights).view(self.mask.shape)

    def compact(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(-1).index_select(0, self.kept_index)

    @classmethod
    def placeholder(cls, shape, options):
        """Keeps nothing: the stored mask replaces it before the state loads (prepare_for_state),
        and until then the storage is empty. An all-kept placeholder would first allocate the
        full weight and an 8-byte index per weight: about 3.4 GiB for XLS-R 300M's encoder."""
        return cls(torch.zeros(shape, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Refuses a mask keeping another number of weights than the stored ones (the stack's
        `original` could not hold them); `prepare_for_state` resizes the storage first."""
        incoming = state_dict.get(prefix + "mask")
        if incoming is not None and int(incoming.sum()) != self.kept_index.numel():
            error_msgs.append(f"{prefix}mask keeps {int(incoming.sum())} weights, the model's "
                              f"{self.kept_index.numel()}; apply the stored masks first "
                              "(prepare_for_state(model, state))")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


@register_transform_kind
class DenseMask(_CachedFloatMask):
    """A mask over full (dense) storage that can change in place during training (`set_mask`):
    no new parameter, no optimizer rebuild, so pruning schedules, rewinding and mask swaps keep
    Adam's state. Masked-out weights keep their stored values (they get zero gradient), so a
    looser mask later brings them back as they were."""

    kind = "dense_mask"

    def set_mask(self, mask: torch.Tensor) -> None:
        if tuple(mask.shape) != tuple(self.mask.shape):
            raise TransformError(f"new mask shape {tuple(mask.shape)} != {tuple(self.mask.shape)}")
        self.mask.copy_(mask)
        self._refresh()


def _flat_kept_index(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1).nonzero().squeeze(1)


class WeightStack(nn.Module):
    """The one parametrization on a transformed weight: holds the transforms (children
    `<kind>.<name>`) and applies them in stage order. With a fixed mask, `original` holds only
    the kept weights and is expanded first; if nothing else is on the weight, that expansion is
    the whole forward pass (the fast path of fixed-mask training)."""

    def __init__(self):
        super().__init__()
        self.order: List[Tuple[str, str]] = []
        self._applied: Tuple[Tuple[str, str, WeightTransform], ...] = ()
        object.__setattr__(self, "_fixed", None)
        self._eval_cache: Optional[Tuple[Tuple, torch.Tensor]] = None

    def _reorder(self) -> None:
        """Derives the application order and the fixed mask once per change of the stack, so the
        forward pass (run for every weight at every step) only walks a tuple."""
        entries = [(kind, name, getattr(self, kind)[name]) for kind, name in self.order]
        self._applied = tuple(entry for stage in (ADAPT, MASK) for entry in entries if entry[2].stage == stage)
        # A plain attribute, not a submodule: the mask is already the child `<kind>.<name>`.
        object.__setattr__(self, "_fixed", next((t for kind, _, t in self._applied if kind == FixedMask.kind), None))
        self._eval_cache = None

    def transforms(self) -> Iterator[Tuple[str, str, WeightTransform]]:
        """(kind, name, transform) in application order: adaptations, then masks."""
        return iter(self._applied)

    def get(self, kind: str, name: str) -> Optional[WeightTransform]:
        return getattr(self, kind)[name] if (kind, name) in self.order else None

    def kept_only_mask(self) -> Optional[FixedMask]:
        return self._fixed

    def add(self, name: str, transform: WeightTransform) -> None:
        if (transform.kind, name) in self.order:
            raise TransformError(f"already holds a {transform.kind} named {name!r}")
        if not hasattr(self, transform.kind):
            self.add_module(transform.kind, nn.ModuleDict())
        elif not isinstance(getattr(self, transform.kind), nn.ModuleDict):
            raise TransformError(f"transform kind {transform.kind!r} clashes with a WeightStack attribute")
        getattr(self, transform.kind)[name] = transform
        self.order.append((transform.kind, name))
        self._reorder()

    def remove(self, kind: str, name: str) -> WeightTransform:
        transform = getattr(self, kind)[name]
        del getattr(self, kind)[name]
        self.order.remove((kind, name))
        self._reorder()
        return transform

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """The effective weight. In eval mode without gradients (validation, decoding) it is kept
        and returned again while the stored weight and every transform's state are unchanged, so a
        transformed model decodes at the cost of a baked one; changing mode drops it (optimizers
        may update `.data`, which no version counter sees)."""
        if self.training or torch.is_grad_enabled():
            return self._effective(original)
        key = (original.data_ptr(), original._version, tuple(t.eval_token() for _, _, t in self._applied))
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self._effective(original))
        return self._eval_cache[1]

    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def _effective(self, original: torch.Tensor) -> torch.Tensor:
        fixed = self._fixed
        weight = fixed.expand(original) if fixed is not None and original.dim() == 1 else original
        adapted = False
        for _, _, transform in self._applied:
            if transform is fixed and not adapted and weight is not original:
                continue  # expanded from kept-only storage: already exactly zero where pruned
            weight = transform(weight)
            adapted = adapted or transform.stage == ADAPT
        return weight

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """What `original` stores for a full base weight (on registration and assignment)."""
        fixed = self.kept_only_mask()
        return fixed.compact(weight) if fixed is not None else weight

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Refuses a checkpoint whose transforms on this weight differ from the model's, naming
        them (the model config decides which transforms exist)."""
        stored = {tuple(key[len(prefix):].split(".")[:2]) for key in state_dict
                  if key.startswith(prefix) and key[len(prefix):].count(".") >= 2}
        extra = sorted(stored - set(self.order))
        if extra:
            error_msgs.append(f"{prefix}: the checkpoint holds transforms {', '.join('/'.join(e) for e in extra)} "
                              f"that the model config does not declare")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class BiasFollower(nn.Module):
    """The parametrization on the bias of a module whose weight stack holds transforms that change
    the bias. It has no state: the effective bias is a function of the stored bias, the stored
    base weight and those transforms' state (`adapt_bias`), so a bare state dict still says how
    to bake it (`<module>.parametrizations.bias.original` beside the weight's stack). Why not a
    second stack: the bias change of IA3 and GLoRA uses the same parameters as their weight
    change, and one owner keeps them one tensor."""

    def __init__(self, module: nn.Module):
        super().__init__()
        object.__setattr__(self, "_module", module)  # not a child: the module owns this follower

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return adapt_bias(stack_of(self._module), bias, lambda: base_weight(self._module))


def adapt_bias(stack: "WeightStack", bias: torch.Tensor, base_weight_of: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The effective bias under the bias-changing adaptations of `stack`, in stack order.
    `base_weight_of()` is called once, and only if a transform reads the weight: under a kept-only
    fixed mask it expands the full matrix, which IA3 and BitFit would pay on every forward pass."""
    weight = None
    for _, _, transform in stack.transforms():
        if transform.changes_bias:
            if transform.bias_reads_weight and weight is None:
                weight = base_weight_of()
            bias = transform.adapt_bias(bias, weight)
    return bias


def _changes_bias(stack: Optional["WeightStack"]) -> bool:
    return stack is not None and any(t.changes_bias for _, _, t in stack.transforms())


# ---- stacks on live modules ---------------------------------------------------------------


def module_of(root: nn.Module, weight_name: str, prefix: str = "") -> nn.Module:
    """The module owning `prefix + weight_name` (a name ending in '.weight')."""
    if not weight_name.endswith(".weight"):
        raise TransformError(f"{weight_name}: weight names end in '.weight'")
    path = prefix + weight_name[: -len(".weight")]
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise TransformError(f"{weight_name}: the model has no module {path!r}") from None


def stack_of(module: nn.Module) -> Optional[WeightStack]:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    found = [p for p in module.parametrizations.weight if isinstance(p, WeightStack)]
    if len(module.parametrizations.weight) != 1 or not found:
        raise TransformError(f"{type(module).__name__}.weight holds a parametrization that is not a WeightStack")
    return found[0]


def _stack_for(module: nn.Module) -> WeightStack:
    stack = stack_of(module)
    if stack is None:
        stack = WeightStack().to(module.weight.device)
        parametrize.register_parametrization(module, "weight", stack, unsafe=True)
    return stack


def _set_original(module: nn.Module, values: torch.Tensor) -> None:
    """Replaces the stored base weight by a new Parameter (same requires_grad)."""
    parametrizations = module.parametrizations.weight
    requires_grad = parametrizations.original.requires_grad
    parametrizations.original = nn.Parameter(values.detach().clone(), requires_grad=requires_grad)


def base_weight(module: nn.Module) -> torch.Tensor:
    """The full base weight under the stack (kept-only storage expanded), detached."""
    stack = stack_of(module)
    if stack is None:
        return module.weight.detach()
    original = module.parametrizations.weight.original.detach()
    fixed = stack.kept_only_mask()
    return fixed.expand(original) if fixed is not None and original.dim() == 1 else original


def add_transform(module: nn.Module, name: str, transform: WeightTransform) -> None:
    """Adds a named transform to `module.weight`, keeping every transform already there. A fixed
    mask switches the storage to kept weights only (a new `original`: build optimizers after)."""
    shape = transform.weight_shape()
    if shape is not None and shape != tuple(module.weight.shape):
        raise TransformError(f"{transform.kind} {name!r} of shape {shape} on a weight of shape "
                             f"{tuple(module.weight.shape)}")
    stack = _stack_for(module)
    if isinstance(transform, FixedMask) and stack.kept_only_mask() is not None:
        raise TransformError("already holds a fixed mask; use replace_fixed_mask")
    if transform.changes_bias and getattr(module, "bias", None) is None:
        raise TransformError(f"{transform.kind} {name!r} changes the bias; {type(module).__name__} has none")
    base = base_weight(module)
    stack.add(name, transform.to(base.device))
    if isinstance(transform, FixedMask):
        _set_original(module, transform.compact(base))
    if transform.changes_bias and not parametrize.is_parametrized(module, "bias"):
        parametrize.register_parametrization(module, "bias", BiasFollower(module), unsafe=True)


def replace_fixed_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Gives the weight's fixed mask a new mask. Weights kept by both keep their values; newly kept
    ones start at their base value under the old mask (0); every other transform stays."""
    stack = stack_of(module)
    fixed = stack.kept_only_mask() if stack is not None else None
    if fixed is None:
        raise TransformError("holds no fixed mask")
    if tuple(mask.shape) != tuple(fixed.mask.shape):
        raise TransformError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(fixed.mask.shape)}")
    base = base_weight(module)
    fixed.mask.copy_(mask)
    fixed._refresh()
    _set_original(module, fixed.compact(base))


def remove_transform(module: nn.Module, kind: str, name: str) -> WeightTransform:
    """Takes one transform off (a fixed mask's storage becomes full again, zeros where pruned);
    a stack left empty is removed, leaving a plain weight."""
    stack = stack_of(module)
    if stack is None or stack.get(kind, name) is None:
        raise TransformError(f"holds no {kind} named {name!r}")
    base = base_weight(module)
    transform = stack.remove(kind, name)
    if kind == FixedMask.kind:
        _set_original(module, base)
    if parametrize.is_parametrized(module, "bias") and not _changes_bias(stack):
        parametrize.remove_parametrizations(module, "bias", leave_parametrized=False)
    if not stack.order:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return transform


def stacks(root: nn.Module, prefix: str = "") -> Iterator[Tuple[str, nn.Module, WeightStack]]:
    """(weight name relative to prefix, module, stack) for every transformed weight under prefix."""
    for path, module in root.named_modules():
        stack = stack_of(module)
        if stack is not None and f"{path}.".startswith(prefix):
            yield f"{path}.weight"[len(prefix):], module, stack


def tie_shared_parameters(root: nn.Module) -> int:
    """Makes transforms with the same `sharing_key` hold the first one's tensors under their
    `shared_tensor_names` (after a model is rebuilt from its plan, each placeholder has its own).
    The optimizer, gradients and `parameters()` then see one tensor; a state dict lists it under
    each holder's key, all with the same storage. Returns the number of tensors re-pointed."""
    first: Dict[Tuple, WeightTransform] = {}
    tied = 0
    for _, _, stack in stacks(root):
        for _, name, transform in stack.transforms():
            key = transform.sharing_key()
            if key is None:
                continue
            key = (name, *key)
            owner = first.setdefault(key, transform)
            for tensor_name in transform.shared_tensor_names if owner is not transform else ():
                if getattr(transform, tensor_name) is not getattr(owner, tensor_name):
                    setattr(transform, tensor_name, getattr(owner, tensor_name))
                    tied += 1
    return tied


def select_language(root: nn.Module, language: str) -> None:
    """Activates `language` on every per-language transform under root (no-op when there are
    none). It lives here, not with a technique, because one technique holds the per-language
    masks and another picks each batch's language, and techniques do not import each other."""
    for module in root.modules():
        if isinstance(module, WeightTransform) and module.languages:
            module.select(language)


def regularisation_terms(root: nn.Module, wanted=None) -> Dict[str, torch.Tensor]:
    """Sum over every module under root of its named regularisation terms (transforms and any
    other module may contribute: a module lists `regularisation_term_names()` and computes
    `regularisation_term(name)`). `wanted(name)` false skips a term without computing it."""
    totals: Dict[str, torch.Tensor] = {}
    for module in root.modules():
        names = getattr(module, "regularisation_term_names", None)
        if names is None:
            continue
        for name in names():
            if wanted is not None and not wanted(name):
                continue
            value = module.regularisation_term(name)
            totals[name] = value if name not in totals else totals[name] + value
    return totals


# ---- the plan: which transforms a model holds, as config --------------------------------------


def transform_plan(root: nn.Module, prefix: str = "") -> List[Dict[str, object]]:
    """JSON-able description of every transform under prefix: kind, name, options and the weights
    it sits on, in registration order. A model config records it, so that a model rebuilt from
    its config (resume, fairseq-generate, export) has the same transforms before a checkpoint
    fills their state."""
    groups: Dict[str, Dict[str, object]] = {}
    for weight, _, stack in stacks(root, prefix):
        for kind, name in stack.order:
            options = stack.get(kind, name).options()
            key = json.dumps([kind, name, options], sort_keys=True)
            groups.setdefault(key, {"kind": kind, "name": name, "options": options, "weights": []})
            groups[key]["weights"].append(weight)
    return list(groups.values())


def build_from_plan(root: nn.Module, plan: List[Mapping[str, object]], prefix: str = "") -> None:
    """Adds placeholder transforms as the plan says (their state comes from a checkpoint next)."""
    for index, entry in enumerate(plan):
        cls = transform_kind(entry.get("kind"), f"transform plan entry {index}")
        for weight in entry["weights"]:
            module = module_of(root, weight, prefix)
            try:
                placeholder = cls.placeholder(tuple(module.weight.shape), entry["options"])
            except TransformError as error:  # an option the plan lacks
                raise TransformError(f"transform plan entry {index} ({entry['kind']} on {weight}): {error}") from None
            add_transform(module, entry["name"], placeholder)
    tie_shared_parameters(root)


def parse_plan(text: Optional[str], where: str) -> List[Dict[str, object]]:
    if not text:
        return []
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as error:
        raise TransformError(f"{where}: not a transform plan ({error})") from None
    if not isinstance(plan, list) or not all(isinstance(e, dict) and {"kind", "name", "options", "weights"} <= set(e)
                                             for e in plan):
        raise TransformError(f"{where}: a transform plan is a list of {{kind, name, options, weights}}")
    return plan
