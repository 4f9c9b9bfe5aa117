"""Sparse decoding: the masked encoder matrices of a subnetwork run with torch's sparse CPU kernels
when the model decodes (`+model.sparse_decoding=on|auto`, or with fairseq-generate
`--model-overrides "{'sparse_decoding': 'on'}"`).

Why: a pruned model's zeros cost as much as any weight in a dense product; only a sparse kernel
turns them into time saved. Which matrices: every encoder `nn.Linear` whose weight stack holds a
mask (a mask file's fixed or dense mask, learned masks, which are binary outside training, and the
active language's pathway mask), read once the checkpoint's state is in place, so checkpoints
whose masks come from the state alone (no transform plan) are covered too.

How: each such projection's `forward` becomes a `SparseProjection`, which in eval mode without
gradients runs `kernels.sparse_linear` on the CSR form of the effective weight, and otherwise (a
gradient wanted, training mode) the stock dense product. The CSR form follows the effective weight
the stack returns (kept by the stack in eval mode), so it is rebuilt exactly when that weight
changes: on first use and when another language is selected. fairseq's MultiheadAttention
normally hands `q_proj.weight` etc. to torch's fused attention, which would multiply the dense
weights without calling the projections; a forward pre-hook on each attention with a sparse
projection sends it down fairseq's own unfused path instead (its `skip_embed_dim_check`, the
switch fairseq keeps for pruned projections), which calls the projections.

`on` runs every masked matrix sparse; `auto` times each one against dense when its effective weight
is made (first use, a new language; `kernels.time_kernels`), keeps dense unless sparse is clearly
faster (`kernels.prefers_sparse`), and logs each decision. Training refuses the key (it is a
decoding setting: `decoding_only_keys`), and a model without a masked encoder matrix refuses it
as a setting that cannot take effect.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...core.transforms import MaskTransform, stacks
from ...errors import PluginInputError
from ..extension import W2V_PREFIX, Technique
from . import kernels

logger = logging.getLogger(__name__)

MODES = ("off", "on", "auto")
KEY = "sparse_decoding"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class SparseDecodingConfig:
    sparse_decoding: str = field(
        default="off",
        metadata={"help": "decoding only: run the masked encoder matrices with torch's sparse CPU kernels in eval "
                  "mode: off, on (every masked matrix), auto (each matrix timed against dense, kept dense unless "
                  "sparse is faster). Pass it to fairseq-generate with --model-overrides; training refuses it"},
    )


class SparseProjection:
    """The forward pass of one masked `nn.Linear` (set as the module's `forward`): CSR in eval mode
    without gradients where `mode` says so, the stock dense product otherwise."""

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

    def refresh(self) -> None:
        """Makes the CSR form (and, under `auto`, the decision) for the current effective weight,
        unless it is the one they were made for."""
        weight = self.module.weight
        if weight is self.source and weight._version == self.source_version:
            return
        self.source, self.source_version = weight, weight._version
        self.weight_csr, self.sparse = None, False
        if not kernels.sparse_kernel_runs(weight):
            if self.mode == "on":
                raise PluginInputError(
                    f"model.{KEY}=on: {self.name} is {str(weight.dtype).replace('torch.', '')} on {weight.device.type}; "
                    "torch's sparse kernels run float32 and float64 on CPU: decode with --cpu and without --fp16, "
                    f"or set model.{KEY}=auto (dense where no sparse kernel runs)")
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

    def runs_sparse_now(self) -> bool:
        """Whether the next forward pass runs the sparse kernel (eval mode, no gradient, chosen)."""
        if self.module.training or torch.is_grad_enabled():
            return False
        self.refresh()
        return self.sparse

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if self.runs_sparse_now():
            return kernels.sparse_linear(input, self.weight_csr, self.module.bias)
        return F.linear(input, self.module.weight, self.module.bias)


def masked_projections(model: nn.Module) -> Dict[str, nn.Linear]:
    """Model-relative weight name -> module of every encoder `nn.Linear` whose weight is masked."""
    return {name: module for name, module, stack in stacks(model, W2V_PREFIX)
            if isinstance(module, nn.Linear) and any(isinstance(t, MaskTransform) for _, _, t in stack.transforms())}


class AttentionRouting:
    """A forward pre-hook on one fairseq MultiheadAttention: before each call, takes fairseq's
    unfused path (which calls the projections) when a projection will run sparse, and the fused
    path, as stock, otherwise."""

    def __init__(self, attention: nn.Module, projections: List[SparseProjection]):
        self.projections = projections
        self.stock_setting = attention.skip_embed_dim_check

    def __call__(self, attention: nn.Module, args) -> None:
        any_sparse = any([projection.runs_sparse_now() for projection in self.projections])
        attention.skip_embed_dim_check = self.stock_setting or any_sparse


class SparseDecodingState:
    """What sparse decoding installed on one model: its projections by weight name."""

    def __init__(self, projections: Dict[str, SparseProjection], routed_attentions: int):
        self.projections = projections
        self.routed_attentions = routed_attentions

    def sparse_names(self) -> List[str]:
        """The weights that run sparse in eval mode now (after at least one decoding forward pass)."""
        return sorted(name for name, projection in self.projections.items() if projection.sparse)


def enable_sparse_decoding(model: nn.Module, mode: str) -> SparseDecodingState:
    """Installs sparse decoding (`on` or `auto`) on every masked encoder matrix of the host model
    and routes the attentions that hold one; refuses a model without any."""
    from fairseq.modules import MultiheadAttention

    masked = masked_projections(model)
    if not masked:
        raise PluginInputError(
            f"model.{KEY}={mode}: the model holds no masked encoder matrix, so no sparse kernel would run; decode it "
            f"with model.{KEY}=off (masks come from model.mask_path, model.score_sparsity or pathway masks)")
    projections = {}
    for name, module in masked.items():
        projection = projections[name] = SparseProjection(module, name, mode)
        module.forward = projection
    routed = 0
    w2v_model = model.get_submodule(W2V_PREFIX[:-1])
    for path, attention in w2v_model.named_modules():
        if not isinstance(attention, MultiheadAttention):
            continue
        held = [projections[f"{path}.{kind}.weight"] for kind in ATTENTION_PROJECTIONS
                if f"{path}.{kind}.weight" in projections]
        if held:
            attention.register_forward_pre_hook(AttentionRouting(attention, held))
            routed += 1
    logger.info("%s=%s: %d masked encoder matrices run with torch's CSR kernels in eval mode%s; %d attention "
                "layers take fairseq's unfused path when a projection runs sparse", KEY, mode, len(projections),
                " where faster than dense (timed on first use)" if mode == "auto" else "", routed)
    return SparseDecodingState(projections, routed)


class SparseDecoding(Technique):
    name = "sparse_decoding"
    config = SparseDecodingConfig
    decoding_only_keys = (KEY,)

    @classmethod
    def enabling_key(cls, cfg, task=None):
        return KEY if cfg.get(KEY, "off") != "off" else None

    @classmethod
    def check(cls, cfg):
        value = cfg.get(KEY, "off")
        if value not in MODES:  # checked here, not by an enum, so that the error is one line
            raise PluginInputError(f"model.{KEY}={value}: choose one of {', '.join(MODES)}")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.state: Optional[SparseDecodingState] = None

    def after_state_loaded(self, model, where):
        """Installs once the checkpoint's masks are in place (a checkpoint without a transform plan
        brings its masks with its state)."""
        if self.state is None:
            self.state = enable_sparse_decoding(model, self.cfg.get(KEY))


TECHNIQUE = SparseDecoding
