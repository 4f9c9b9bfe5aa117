"""Loading fairseq checkpoints under torch's safe (`weights_only=True`) unpickler.

torch >= 2.6 loads with `weights_only=True` by default and refuses any class it does not know.
Fine-tuned fairseq checkpoints hold a `fairseq.data.dictionary.Dictionary` (the task state) and old
ones an `argparse.Namespace` (their `args`). We allow-list exactly these two classes, so stock
`fairseq-hydra-train` (resume) and `fairseq-generate` load checkpoints once the plugin is imported,
while arbitrary pickled objects are still refused. We never switch weights-only loading off, and
never pass on torch's own error text, which advises doing exactly that.
"""
import argparse
import re
from typing import Mapping, Optional

import torch
from fairseq.data.dictionary import Dictionary
from omegaconf import OmegaConf

from ...core.compact import is_compact_state
from ...core.maskfile import is_mask_file

FAIRSEQ_CHECKPOINT_CLASSES = (Dictionary, argparse.Namespace)
ZIP_MAGIC = b"PK\x03\x04"
"""How a checkpoint in torch.save's (zip) format begins."""
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
"""How torch's weights-only unpickler names a class or function it refuses to load."""

torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_CLASSES))


class CheckpointLoadError(ValueError):
    """A checkpoint could not be read (missing, truncated, another kind of file, or holding a class
    we do not allow); the message starts with the file name."""


def _unreadable(path, error: Exception) -> CheckpointLoadError:
    """What the file is instead of a checkpoint, in our words, from what torch.load raised."""
    refused = _REFUSED_GLOBAL.search(str(error))
    if refused:
        allowed = ", ".join(c.__module__ + "." + c.__qualname__ for c in FAIRSEQ_CHECKPOINT_CLASSES)
        return CheckpointLoadError(
            f"{path}: holds {refused.group(1)}, refused by torch's weights-only loader "
            f"(fairseq-subnets allows only {allowed})"
        )
    if is_mask_file(path):
        return CheckpointLoadError(f"{path} is a mask file, not a checkpoint")
    from .adapters import is_adapter_file  # adapters reads checkpoints through this module

    if is_adapter_file(path):
        return CheckpointLoadError(f"{path} is an adapter file, not a checkpoint: rebuild the run's checkpoint from it "
                                   "and its backbone with fairseq-subnets adapters apply")
    with open(path, "rb") as handle:
        if handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
            return CheckpointLoadError(
                f"{path}: damaged torch checkpoint (truncated, or a zip archive of another kind)"
            )
    return CheckpointLoadError(f"{path}: not a torch checkpoint")


def load_checkpoint(path, mmap=False):
    """Reads a torch checkpoint with the safe unpickler; every failure is a CheckpointLoadError
    naming the file. Fed arbitrary bytes, the unpickler raises nearly any exception type
    (KeyError, IndexError, UnpicklingError, ...), hence the broad catch. With `mmap`, the tensors
    are views of the mapped file, read only when used (a look at a checkpoint's config)."""
    try:
        if mmap:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointLoadError(f"{path}: no such checkpoint file") from None
    except OSError as error:
        raise CheckpointLoadError(f"{path}: cannot read ({error.strerror})") from None
    except Exception as error:
        raise _unreadable(path, error) from None


def load_fairseq_checkpoint(path, compact=False):
    """load_checkpoint for readers of the model weights: also refuses a torch file that holds no
    fairseq checkpoint (no 'model' state dict), and, unless `compact`, a compact checkpoint, whose
    coded matrices only decoding reads (plugin.formats.compact)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointLoadError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    if not compact and is_compact_state(checkpoint["model"]):
        raise CheckpointLoadError(f"{path}: a compact checkpoint (export --compact), which only decoding reads: use "
                                  "the checkpoint it was exported from, or its dense export")
    return checkpoint


def mapped_checkpoint(path):
    """The checkpoint with its tensors memory-mapped rather than read, so that checking a 1.2 GB
    XLS-R checkpoint costs milliseconds; what torch cannot map (a legacy, non-zip checkpoint) is
    read whole, and what it cannot read at all gets the loader's own error."""
    try:
        checkpoint = load_checkpoint(path, mmap=True)
    except CheckpointLoadError:  # whatever it is, the loader below reads it or says what the file is instead
        checkpoint = None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint
    return load_fairseq_checkpoint(path)


def trainer_checkpoint(cfg, model_state: Mapping[str, torch.Tensor], criterion_name: str,
                       task_state: Optional[Mapping[str, object]] = None):
    """The dictionary fairseq's trainer saves after 0 updates, holding `cfg` (a FairseqConfig) as
    plain containers and `model_state`. Stock loaders upgrade (and, without an optimizer history,
    reject) anything laid out differently, so checkpoints made outside a training run use this."""
    checkpoint = {
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model_state,
        "optimizer_history": [{"criterion_name": criterion_name, "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }
    if task_state is not None:
        checkpoint["task_state"] = task_state
    return checkpoint
