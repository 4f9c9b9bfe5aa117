"""Checkpoints written outside training (`adapters apply`, `bundles build | add | remove`), checked
against the model they describe before and after they are written.

Such a checkpoint is assembled from pieces (a backbone, an adapter file, per-language masks and
output layers), any of which may be damaged or edited; fairseq-generate and `export` would only
find out later, with a size mismatch or a missing key far from its cause. So the model the
checkpoint's config describes is built first and the assembled state must fit it key for key and
shape for shape; then the bytes are written to the partial file, read back with the weights-only
loader, compared tensor for tensor with what was meant, and loaded into that model, and only then
renamed into place. A refused checkpoint leaves nothing behind.
"""
import io
import types
from typing import Mapping, Optional

import torch
from omegaconf import OmegaConf

from ...atomic import write_atomically
from ...errors import PluginInputError
from .checkpoints import load_fairseq_checkpoint


class CheckpointCheckError(PluginInputError):
    """An assembled checkpoint does not fit the model its config describes; the message names the
    input at fault (`label`) and the state key."""


def model_of_config(cfg: Mapping, dictionary, label: str):
    """The `subnets_wav2vec_ctc` model `cfg` describes, built as our tasks build it from a checkpoint
    for fairseq-generate and export (the wav2vec2 encoder from the recorded `w2v_args`, the
    transforms from `transform_plan`, the training-time inputs such as `init_from` and `mask_path`
    not read), with `dictionary` as the task's target dictionary."""
    from fairseq.models import build_model

    from ..components.models import TRAINING_ONLY_MODEL_KEYS

    model_cfg = {key: None if key in TRAINING_ONLY_MODEL_KEYS else value for key, value in cfg["model"].items()}
    try:
        return build_model(OmegaConf.create(model_cfg), types.SimpleNamespace(target_dictionary=dictionary))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointCheckError(f"{label}: its config does not build a model ({error})") from None


def check_state_fits(model, state: Mapping[str, torch.Tensor], label: str) -> None:
    """Fails naming the first key that `state` (after the model's own key upgrades, such as a
    bundle's embedded masks) lacks, holds beyond the model, or holds in another shape."""
    from .bundles import expand_bundle_masks

    check_tensors_fit(model.state_dict(), expand_bundle_masks(state), label)


def check_tensors_fit(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], label: str) -> None:
    """Fails naming the first key of `expected` that `given` lacks or holds in another shape, or
    the first key `given` holds beyond it."""
    for key, value in expected.items():
        if key not in given:
            raise CheckpointCheckError(f"{label}: holds no {key}, which its model needs")
        if tuple(given[key].shape) != tuple(value.shape):
            raise CheckpointCheckError(f"{label}: {key} has shape {tuple(given[key].shape)}, its model needs "
                                       f"{tuple(value.shape)}")
    extra = sorted(set(given) - set(expected))
    if extra:
        raise CheckpointCheckError(f"{label}: holds {extra[0]}, which its model does not have")


def _differences(written: Mapping[str, torch.Tensor], meant: Mapping[str, torch.Tensor]) -> Optional[str]:
    if written.keys() != meant.keys():
        return f"keys differ at {sorted(written.keys() ^ meant.keys())[0]}"
    for key, value in meant.items():
        other = written[key]
        if other.dtype != value.dtype or other.shape != value.shape or not torch.equal(other, value):
            return f"{key} differs"
    return None


def write_checked_checkpoint(path: str, checkpoint: dict, model) -> None:
    """Writes `checkpoint` to `path` atomically, renaming it into place only once the written bytes
    read back (weights-only) to the same state, config and dictionary and load into `model`
    (strictly), the model its config describes."""
    def check_written(temporary):
        written = load_fairseq_checkpoint(temporary)
        problem = _differences(written["model"], checkpoint["model"])
        if problem is None and written.get("cfg") != checkpoint.get("cfg"):
            problem = "its config differs"
        meant_dictionary = (checkpoint.get("task_state") or {}).get("target_dictionary")
        if problem is None and meant_dictionary is not None:
            if written["task_state"]["target_dictionary"].symbols != meant_dictionary.symbols:
                problem = "its dictionary differs"
        if problem is None:
            try:
                model.load_state_dict(written["model"], strict=True)
            except (RuntimeError, ValueError) as error:
                problem = f"its model does not load it ({str(error).splitlines()[0]})"
        if problem is not None:
            raise CheckpointCheckError(f"{path}: the written checkpoint does not read back as written ({problem}); "
                                       "nothing was written")

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomically(path, buffer.getbuffer(), check_written)
