"""Fixed masks: a subnetwork from a mask file (`fairseq-subnets prune`), fixed on the encoder
weights while the rest of the model fine-tunes (Storey et al. 2025, downstream fine-tuning).

`+model.mask_path=FILE` applies the selected masks of the file once the starting weights are in
place, so pruned effective weights are exactly zero from the first update. Under kept-only storage
the pruned weights are not even stored: gradients, optimizer state and checkpoints cover the kept
weights alone. A model rebuilt from a checkpoint gets the masks from the checkpoint (its transform
plan), so the file is read by training alone and may move afterwards.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

from ...core.maskfile import MaskFileError
from ...core.parametrize import MASK_STORAGES, apply_masks
from ...errors import PluginInputError
from ..extension import W2V_PREFIX, Technique
from ..mask_files import fitting_masks

MASK_SELECTION_KEYS = ("model.mask_targets", "model.mask_layers")


@dataclass
class FixedMaskConfig:
    mask_path: Optional[str] = field(
        default=None,
        metadata={"help": "mask file (from `fairseq-subnets prune`) fixed on the encoder weights"},
    )
    mask_targets: Optional[str] = field(
        default=None,
        metadata={"help": "apply only these module kinds of the mask file (q,k,v,out,fc1,fc2,attn,ffn,all); "
                  "default: every mask in the file"},
    )
    mask_layers: Optional[str] = field(
        default=None, metadata={"help": "apply only these encoder layers of the mask file (e.g. 0-5); default: all"}
    )
    mask_storage: str = field(
        default="kept",
        metadata={"help": "kept: store and train only the kept weights (fastest; the mask never changes); "
                  "dense: full weights under a mask that may change in place during training"},
    )


def apply_mask_file(model, path: str, targets="all", layers="all", storage="kept") -> None:
    """Fixes the selected masks of a mask file on the host model's encoder (kept-only storage drops
    the pruned weights; dense storage keeps them under a mask that may change later)."""
    apply_masks(model, fitting_masks(model.encoder_weight_shapes(), path, targets, layers, MASK_SELECTION_KEYS),
                prefix=W2V_PREFIX, storage=storage)


@contextmanager
def mask_path_named():
    """A bad mask file's error names the key that gave it."""
    try:
        yield
    except MaskFileError as error:
        raise MaskFileError(f"model.mask_path: {error}") from None


class FixedMasks(Technique):
    name = "fixed_masks"
    config = FixedMaskConfig
    training_only_keys = ("mask_path",)

    @classmethod
    def enabling_key(cls, cfg, task=None):
        return "mask_path" if cfg.get("mask_path") else None

    @classmethod
    def check(cls, cfg):
        if cfg.mask_storage not in MASK_STORAGES:  # checked here, not by an enum, so that the error is one line
            raise PluginInputError(f"model.mask_storage={cfg.mask_storage}: choose one of {', '.join(MASK_STORAGES)}")

    @classmethod
    def check_files(cls, cfg, encoder_shapes, task=None):
        with mask_path_named():
            fitting_masks(encoder_shapes, cfg.mask_path, cfg.mask_targets or "all", cfg.mask_layers or "all",
                          MASK_SELECTION_KEYS)

    def add_to_model(self, model, cfg):
        with mask_path_named():
            apply_mask_file(model, cfg.mask_path, cfg.mask_targets or "all", cfg.mask_layers or "all",
                            storage=cfg.mask_storage)


TECHNIQUE = FixedMasks
