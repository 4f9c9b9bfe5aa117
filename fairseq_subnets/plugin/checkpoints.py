"""Loading fairseq checkpoints under torch's safe (`weights_only=True`) unpickler.

torch >= 2.6 loads with `weights_only=True` by default and refuses any class it does not know.
Fine-tuned fairseq checkpoints hold a `fairseq.data.dictionary.Dictionary` (the task state) and old
ones an `argparse.Namespace` (their `args`). We allow-list exactly these two classes, so stock
`fairseq-hydra-train` (resume) and `fairseq-generate` load checkpoints once the plugin is imported,
while arbitrary pickled objects are still refused. We never switch weights-only loading off.
"""
import argparse
import pickle

import torch
from fairseq.data.dictionary import Dictionary

FAIRSEQ_CHECKPOINT_CLASSES = (Dictionary, argparse.Namespace)

torch.serialization.add_safe_globals(list(FAIRSEQ_CHECKPOINT_CLASSES))


class CheckpointLoadError(RuntimeError):
    """A checkpoint could not be read (missing, truncated, or holding a class we do not allow)."""


def load_checkpoint(path):
    """Reads a fairseq checkpoint as a dict with the safe unpickler; errors name the file."""
    try:
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointLoadError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as error:
        raise CheckpointLoadError(
            f"{path}: refused by torch's weights-only loader ({error}). fairseq-subnets allows only "
            f"{', '.join(c.__module__ + '.' + c.__qualname__ for c in FAIRSEQ_CHECKPOINT_CLASSES)}; "
            "if you trust this file, load it yourself with torch.load(..., weights_only=False)."
        ) from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointLoadError(f"{path}: not a readable torch checkpoint ({error})") from None
