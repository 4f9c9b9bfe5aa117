"""Sparse decoding: the masked encoder matrices of a subnetwork run with torch's sparse CPU kernels
when the model decodes (`+model.sparse_decoding=on|auto`, or with fairseq-generate
`--model-overrides "{'sparse_decoding': 'on'}"`).

Why: a pruned model's zeros cost as much as any weight in a dense product; only a sparse kernel
turns them into time saved. Which matrices: every encoder `nn.Linear` whose weight stack holds a
mask (a mask file's fixed or dense mask, learned masks, which are binary outside training, and the
active language's pathway mask), read once the checkpoint's state is in place, so checkpoints
whose masks come from the state alone (no transform plan) are covered too; and every encoder matrix
without a weight stack whose weight holds an exact zero, taken as masked by its zeros: a pruned
stock export (`fairseq-subnets export`) bakes its masks into the weights and stores none, and a
trained weight that was not pruned is practically never exactly 0 (`zero_pruned_projections`).

How: each such projection's `forward` becomes a `SparseProjection`, which in eval mode without
gradients runs `kernels.sparse_linear` on the CSR form of the effective weight, and otherwise (a
gradient wanted, training mode) the stock dense product. The CSR form follows the effective weight
the stack returns (kept by the stack in eval mode), so it is rebuilt exactly when that weight
changes: on first use and when another language is selected. fairseq's MultiheadAttention
normally hands `q_proj.weight` etc. to torch's fused attention, which would multiply the dense
weights without calling the projections. So each attention with a sparse projection gets a
forward of its own (`ProjectedAttention`): while a projection runs sparse, wav2vec2's encoder
self-attention calls its four projections and hands their outputs to torch's fused
scaled-dot-product attention, as the stock path does with its dense products. fairseq's own
unfused path also calls the projections (its `skip_embed_dim_check`, the switch fairseq keeps for
pruned projections), but writes out every head's full score matrix, which grows with the square of
the utterance's length and lost on long utterances much of what the sparse projections gained; it
stays for the calls the fused product cannot serve (attention weights asked for, incremental
state, extra key and value biases, an attention mask, dropout at inference).

Under `on`, a matrix whose effective weight can no longer change (no per-language masks: fixed
masks, learned masks, tuners; not pathways, whose language may switch) is made CSR when the
checkpoint's state is in place and its dense weight is then dropped: the weight stack (stored
weight, mask, cached effective weight) is removed and `weight` becomes an empty placeholder, so the
weights' memory shrinks with the sparsity instead of growing. Anything that would need the dense
weight again (training mode, gradients, a state dict) is refused with one line. A compact
checkpoint (`export --compact`, plugin.formats.compact) hands its coded matrices over before the
state loads (`take_compact_matrices`): under `on` their CSR form is built from the kept values and
the mask alone, and their dense weight never exists (the constructor's random one is freed); under
`auto` and `off` the host rebuilds the dense weights. fairseq-generate casts the model (`--fp16`) and
moves it to the GPU after loading it; `before_inference` (the model's `prepare_for_inference_`,
called right after) refuses `on` there, before the first batch.

`on` runs every masked matrix sparse; `auto` times each one against dense when its effective weight
is made (first use, a new language; `kernels.time_kernels`), keeps dense unless sparse is clearly
faster (`kernels.prefers_sparse`), and logs each decision. A matrix whose effective weight can no
longer change then settles: taken sparse, its dense weight is dropped as under `on`; kept dense, its
effective weight becomes a plain weight and the weight stack goes (`settle_dense`). So `auto` holds
no more weight memory than the dense export instead of a stack beside each product, and a settled
matrix refuses training, gradients and a state dict as a dropped one does. Training refuses the
key (it is a decoding setting: `decoding_only_keys`), and a model without a masked encoder matrix
refuses it as a setting that cannot take effect.
"""
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ...core.targets import parse_weight_name
from ...core.transforms import MaskTransform, stack_of, stacks
from ...errors import PluginInputError
from ..extension import W2V_PREFIX, Technique
from . import kernels

logger = logging.getLogger(__name__)

MODES = ("off", "on", "auto")
KEY = "sparse_decoding"
COMPACT_KEY = "compact_checkpoint"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class SparseDecodingConfig:
    sparse_decoding: str = field(
        default="off",
        metadata={"help": "decoding only: run the masked encoder matrices with torch's sparse CPU kernels in eval "
                  "mode: off, on (every masked matrix), auto (each matrix timed against dense, kept dense unless "
                  "sparse is faster). Pass it to fairseq-generate with --model-overrides; training refuses it"},
    )
    compact_checkpoint: bool = field(
        default=False,
        metadata={"help": "written by fairseq-subnets export --compact: the checkpoint's masked encoder matrices are "
                  "stored as coded masks and kept values, which sparse_decoding=on turns into CSR directly. Leave "
                  "unset; training refuses it"},
    )


def kernel_refusal(name: str, tensor: torch.Tensor) -> PluginInputError:
    return PluginInputError(
        f"model.{KEY}=on: {name} is {str(tensor.dtype).replace('torch.', '')} on {tensor.device.type}; "
        "torch's sparse kernels run float32 and float64 on CPU: decode with --cpu and without --fp16, "
        f"or set model.{KEY}=auto (dense where no sparse kernel runs)")


@contextmanager
def evaluated(module: nn.Module):
    """`module` in eval mode for the block (its weight stack then gives the decoding weight:
    learned masks binarised), its mode restored after."""
    training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(training)


class SparseProjection:
    """The forward pass of one masked `nn.Linear` (set as the module's `forward`): CSR in eval mode
    without gradients where `mode` says so, the stock dense product otherwise; once the dense
    weight is dropped (`drop_dense`), CSR only."""

    def __init__(self, module: nn.Linear, name: str, mode: str):
        self.module = module
        self.name = name
        self.mode = mode
        self.source: Optional[torch.Tensor] = None
        """The effective weight the current decision and CSR form were made from (held, so that
        its identity cannot pass to another tensor)."""
        self.source_version = -1
        self.weight_csr: Optional[torch.Tensor] = None
        self.sparse = False
        self.settled = False
        """Whether the matrix gave up its dense weight (`drop_dense`) or its weight stack
        (`settle_dense`): it runs as it does now, in eval mode without gradients only."""

    @property
    def dense_weight_dropped(self) -> bool:
        """Whether the matrix runs its CSR form only: settled sparse, which only `drop_dense` does."""
        return self.settled and self.sparse

    def can_settle(self) -> bool:
        """Whether the effective weight can no longer change in eval mode: no per-language
        transform (a language switch would need the dense weight and its masks), and a sparse CPU
        kernel."""
        stack = stack_of(self.module)
        if stack is not None and any(transform.languages for _, _, transform in stack.transforms()):
            return False
        return kernels.sparse_kernel_runs(self.module.weight)

    def settle_dense(self) -> None:
        """Keeps the effective weight (eval mode) as the module's plain weight from now on: the
        weight stack (stored weight, mask, cached effective weight) goes, so a matrix with a stack
        that `auto` keeps dense holds one dense weight, as the dense export does. Without its mask
        the weight can no longer be trained or saved as masked, so training mode, gradients and a
        state dict are refused as where the dense weight was dropped."""
        module = self.module
        with torch.no_grad(), evaluated(module):
            for name in ("bias", "weight"):
                if parametrize.is_parametrized(module, name):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        module.weight.requires_grad_(False)
        self.source, self.source_version = None, -1
        self.weight_csr, self.sparse, self.settled = None, False, True

    def drop_dense(self, weight_csr: Optional[torch.Tensor] = None) -> None:
        """Runs `weight_csr` (by default the CSR form of the effective weight in eval mode) from now
        on and frees the dense weight: the bias keeps its effective value, the weight stack goes,
        and `weight` becomes an empty placeholder of the weight's dtype and device (so casting and
        moving the model still show in it)."""
        module = self.module
        if weight_csr is None:
            with torch.no_grad(), evaluated(module):
                weight_csr = kernels.csr_of(module.weight)
        with torch.no_grad():
            if parametrize.is_parametrized(module, "bias"):
                parametrize.remove_parametrizations(module, "bias", leave_parametrized=True)
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        placeholder = module.weight.new_empty(0)
        module.weight = nn.Parameter(placeholder, requires_grad=False)
        self.source, self.source_version = None, -1
        self.weight_csr, self.sparse, self.settled = weight_csr, True, True

    def refresh(self) -> None:
        """Makes the CSR form (and, under `auto`, the decision, after which the matrix settles where
        it can) for the current effective weight, unless it is the one they were made for (or the
        matrix has settled)."""
        if self.settled:
            return
        weight = self.module.weight
        if weight is self.source and weight._version == self.source_version:
            return
        self.source, self.source_version = weight, weight._version
        self.weight_csr, self.sparse = None, False
        if not kernels.sparse_kernel_runs(weight):
            if self.mode == "on":
                raise kernel_refusal(self.name, weight)
            logger.info("%s=auto: %s stays dense (%s on %s: no sparse CPU kernel)", KEY, self.name, weight.dtype,
                        weight.device.type)
            return
        weight_csr = kernels.csr_of(weight)
        if self.mode == "auto":
            times = kernels.time_kernels(weight, weight_csr, self.module.bias)
            self.sparse = times.sparse_is_faster
            logger.info("%s=auto: %s (%dx%d, %.1f%% zero): sparse %.3f ms, dense %.3f ms (median of %d at %d "
                        "frames) -> %s", KEY, self.name, *weight.shape, 100 * (1 - weight_csr._nnz() / weight.numel()),
                        times.sparse * 1e3, times.dense * 1e3, kernels.AUTO_REPETITIONS, kernels.AUTO_FRAMES,
                        "sparse" if self.sparse else "dense")
        else:
            self.sparse = True
        self.weight_csr = weight_csr if self.sparse else None
        if self.mode == "auto" and self.can_settle():
            if self.sparse:
                self.drop_dense(weight_csr)
            elif stack_of(self.module) is not None:  # a plain weight kept dense has nothing to give up
                self.settle_dense()

    def runs_sparse_now(self) -> bool:
        """Whether the next forward pass runs the sparse kernel (eval mode, no gradient, chosen);
        refuses a pass that needs what a settled matrix gave up."""
        if self.module.training or torch.is_grad_enabled():
            if self.settled:
                raise self.dense_needed("a forward pass in training mode or with gradients")
            return False
        self.refresh()
        return self.sparse

    def dense_needed(self, use: str) -> PluginInputError:
        return PluginInputError(
            f"{self.name}: {use} needs the dense weight and its mask, which model.{KEY}={self.mode} gave up (it runs "
            f"{'sparse' if self.sparse else 'dense'} in eval mode without gradients only): load the checkpoint with "
            f"model.{KEY}=off for that (a compact checkpoint: its dense export)")

    def check_kernel_runs(self) -> None:
        """Refuses `on` for a model cast or moved where no sparse kernel runs (the stored weight,
        the weight placeholder or the bias shows the cast and the move)."""
        for tensor in (stored_tensor(self.module, "weight"), stored_tensor(self.module, "bias")):
            if tensor is not None and not kernels.sparse_kernel_runs(tensor):
                raise kernel_refusal(self.name, tensor)

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if self.runs_sparse_now():
            return kernels.sparse_linear(input, self.weight_csr, self.module.bias)
        return F.linear(input, self.module.weight, self.module.bias)


def stored_tensor(module: nn.Module, name: str) -> Optional[torch.Tensor]:
    """The module's tensor `name` as stored, without computing it through its weight stack:
    per-language masks refuse that before fairseq-generate's first batch selects a language."""
    if parametrize.is_parametrized(module, name):
        return getattr(module.parametrizations, name).original
    return getattr(module, name)


def masked_projections(model: nn.Module) -> Dict[str, nn.Linear]:
    """Model-relative weight name -> module of every encoder `nn.Linear` whose weight is masked."""
    return {name: module for name, module, stack in stacks(model, W2V_PREFIX)
            if isinstance(module, nn.Linear) and any(isinstance(t, MaskTransform) for _, _, t in stack.transforms())}


def zero_pruned_projections(model: nn.Module) -> Dict[str, nn.Linear]:
    """Model-relative weight name -> module of every prunable encoder `nn.Linear` without a weight
    stack whose weight holds an exact zero: a matrix pruned and baked (a stock export), whose zeros
    are its mask. A placeholder left by a dropped dense weight is empty and holds none."""
    w2v_model = model.get_submodule(W2V_PREFIX[:-1])
    return {f"{path}.weight": module for path, module in w2v_model.named_modules()
            if isinstance(module, nn.Linear) and parse_weight_name(f"{path}.weight") is not None
            and stack_of(module) is None and bool((module.weight == 0).any())}


class ProjectedAttention:
    """The forward pass of one fairseq MultiheadAttention holding a sparse projection (set as the
    module's `forward`, with the stock one's arguments): the stock pass while no projection runs
    sparse; otherwise the projections and torch's fused scaled-dot-product attention where that
    computes what the stock pass would (`fused_product_serves`), and fairseq's unfused path, which
    also calls the projections, for any other call."""

    def __init__(self, attention: nn.Module, projections: List[SparseProjection]):
        self.attention = attention
        self.projections = projections
        self.stock_forward = attention.forward
        self.stock_setting = attention.skip_embed_dim_check

    def __call__(self, query, key, value, key_padding_mask=None, incremental_state=None, need_weights=True,
                 static_kv=False, attn_mask=None, before_softmax=False, need_head_weights=False):
        arguments = (query, key, value, key_padding_mask, incremental_state, need_weights, static_kv, attn_mask,
                     before_softmax, need_head_weights)
        if not any([projection.runs_sparse_now() for projection in self.projections]):
            return self.stock_forward(*arguments)
        if self.fused_product_serves(*arguments):
            return self.projected_self_attention(query, key_padding_mask), None
        attention = self.attention
        attention.skip_embed_dim_check = True
        try:
            return self.stock_forward(*arguments)
        finally:
            attention.skip_embed_dim_check = self.stock_setting

    def fused_product_serves(self, query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                             attn_mask, before_softmax, need_head_weights) -> bool:
        """Whether the call is a plain self-attention pass without dropout whose weights nobody
        reads: what wav2vec2's encoder layers ask for when decoding."""
        attention = self.attention
        return (attention.self_attention and key is query and value is query and incremental_state is None
                and not (static_kv or need_weights or need_head_weights or before_softmax) and attn_mask is None
                and attention.bias_k is None and attention.bias_v is None and not attention.add_zero_attn
                and not (attention.training or attention.dropout_module.apply_during_inference))

    def projected_self_attention(self, query: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The attention's output for time-major `query` (frames x batch x channels): its
        projections (sparse or dense, each as installed) and one fused product over every head;
        padded keys (`key_padding_mask` true) take no part."""
        attention = self.attention
        frames, batch, channels = query.shape

        def heads_first(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(frames, batch, attention.num_heads, attention.head_dim).permute(1, 2, 0, 3)

        keys_taking_part = None if key_padding_mask is None else ~key_padding_mask.bool()[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            heads_first(attention.q_proj(query)), heads_first(attention.k_proj(query)),
            heads_first(attention.v_proj(query)), attn_mask=keys_taking_part)
        return attention.out_proj(attended.permute(2, 0, 1, 3).reshape(frames, batch, channels))


class SparseDecodingState:
    """What sparse decoding installed on one model: its projections by weight name."""

    def __init__(self, projections: Dict[str, SparseProjection], routed_attentions: int):
        self.projections = projections
        self.routed_attentions = routed_attentions

    def sparse_names(self) -> List[str]:
        """The weights that run sparse in eval mode now (after at least one decoding forward pass)."""
        return sorted(name for name, projection in self.projections.items() if projection.sparse)


def enable_sparse_decoding(model: nn.Module, mode: str,
                           installed: Optional[Mapping[str, SparseProjection]] = None) -> SparseDecodingState:
    """Installs sparse decoding (`on` or `auto`) on every masked encoder matrix of the host model (a
    weight stack with a mask, or a plain weight holding exact zeros: a pruned stock export's, or a
    compact checkpoint's rebuilt dense under `auto`), besides the projections already `installed`
    from a compact checkpoint under `on`; drops the dense weights `on` no longer needs, and routes
    the attentions that hold one; refuses a model without any."""
    from fairseq.modules import MultiheadAttention

    w2v_model = model.get_submodule(W2V_PREFIX[:-1])
    projections = dict(installed or {})
    by_zeros = {name: module for name, module in zero_pruned_projections(model).items() if name not in projections}
    masked = {**by_zeros, **masked_projections(model)}
    if not masked and not projections:
        raise PluginInputError(
            f"model.{KEY}={mode}: the model holds no masked encoder matrix, so no sparse kernel would run; decode it "
            f"with model.{KEY}=off (masks come from model.mask_path, model.score_sparsity or pathway masks; an "
            "encoder matrix without a mask counts as masked where it holds exact zeros, as a pruned stock export's do)")
    if by_zeros:
        logger.info("%s=%s: %d encoder matrices without a mask are taken as masked by their exact zeros (a pruned "
                    "stock export's)", KEY, mode, len(by_zeros))
    for name, module in masked.items():
        projection = projections[name] = SparseProjection(module, name, mode)
        module.forward = projection
        if mode == "on" and projection.can_settle():
            projection.drop_dense()
    routed = 0
    for path, attention in w2v_model.named_modules():
        if not isinstance(attention, MultiheadAttention):
            continue
        held = [projections[f"{path}.{kind}.weight"] for kind in ATTENTION_PROJECTIONS
                if f"{path}.{kind}.weight" in projections]
        if held:
            attention.forward = ProjectedAttention(attention, held)
            routed += 1
    logger.info("%s=%s: %d masked encoder matrices run with torch's CSR kernels in eval mode%s; %d attention "
                "layers call their projections when one runs sparse; %d dense weights dropped", KEY, mode,
                len(projections), " where faster than dense (timed on first use)" if mode == "auto" else "", routed,
                sum(projection.dense_weight_dropped for projection in projections.values()))
    return SparseDecodingState(projections, routed)


class SparseDecoding(Technique):
    name = "sparse_decoding"
    config = SparseDecodingConfig
    decoding_only_keys = (KEY, COMPACT_KEY)

    @classmethod
    def enabling_key(cls, cfg, task=None):
        return KEY if cfg.get(KEY, "off") != "off" else None

    @classmethod
    def decoding_only_reason(cls, key, value):
        if key == COMPACT_KEY:
            return ("marks a compact checkpoint (export --compact), which only decoding reads: train from the "
                    "checkpoint it was exported from, or its dense export")
        return super().decoding_only_reason(key, value)

    @classmethod
    def check(cls, cfg):
        value = cfg.get(KEY, "off")
        if value not in MODES:  # checked here, not by an enum, so that the error is one line
            raise PluginInputError(f"model.{KEY}={value}: choose one of {', '.join(MODES)}")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.state: Optional[SparseDecodingState] = None
        self.compact_projections: Dict[str, SparseProjection] = {}

    def take_compact_matrices(self, model, matrices):
        """Under `on`, each coded matrix becomes a projection running its CSR form, built from the
        kept values and the mask; the constructor's dense weight is freed. Under `auto` the host
        rebuilds the dense weights, whose zeros (the mask) make them masked matrices, each timed."""
        mode = self.cfg.get(KEY)
        w2v_model = model.get_submodule(W2V_PREFIX[:-1])
        taken = set()
        if mode != "on":
            return taken
        for key, matrix in matrices.items():
            name = key[len(W2V_PREFIX):]
            module = w2v_model.get_submodule(name[:-len(".weight")])
            projection = self.compact_projections[name] = SparseProjection(module, name, mode)
            projection.drop_dense(matrix.csr())
            module.forward = projection
            taken.add(key)
        return taken

    def after_state_loaded(self, model, where):
        """Installs once the checkpoint's masks are in place (a checkpoint without a transform plan
        brings its masks with its state)."""
        if self.state is None:
            self.state = enable_sparse_decoding(model, self.cfg.get(KEY), self.compact_projections)

    def before_inference(self, model):
        if self.state is not None and self.cfg.get(KEY) == "on":
            for projection in self.state.projections.values():
                projection.check_kernel_runs()

    def before_state_dict(self, model):
        if self.state is not None:
            for projection in self.state.projections.values():
                if projection.settled:
                    raise projection.dense_needed("a state dict")


TECHNIQUE = SparseDecoding
