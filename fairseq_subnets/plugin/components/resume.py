"""Starting a training run in a save_dir that already holds one: what stock fairseq resumes from,
checked before any work.

Stock fairseq resumes from `checkpoint.save_dir/checkpoint_last.pt` whenever it exists, and two
things can go wrong there without a word:

- **A save killed part-way.** fairseq writes each checkpoint to a temporary file and renames it,
  but then makes `checkpoint_last.pt` (and the best and epoch checkpoints) by a plain copy, so a
  kill inside that copy leaves it truncated, and the same command then ends in a traceback that
  names no file. `install_atomic_checkpoint_copies` makes those copies atomic; for files damaged
  another way (or by an older version), `resume_checkpoint` falls back to the newest complete
  checkpoint in save_dir, saying which, and stops with one line when there is none.
- **A setting changed since.** The resumed run takes its weights, masks, optimizer and scheduler
  state from the checkpoint, while fairseq records the new settings in every checkpoint it writes,
  so a changed key (a sparsity, a mask file, a tuner's rank) would be recorded but not applied.
  `refuse_changed_settings` compares every key of the sections in `COMPARED_SECTIONS` with the
  checkpoint's and stops at the first change, naming the key and both values. Keys the model
  writes while it is built (each technique's `recorded_keys`) follow from the others and are not
  compared. The other sections (optimization, lr_scheduler, dataset, checkpoint, common) take
  effect from the resumed update on, as in stock fairseq: `optimization.max_update`, the learning
  rate and its schedule, batch sizes, the save and log intervals, the seed.
"""
import logging
import os
import shutil
from enum import Enum
from pathlib import Path
from typing import Iterable, Mapping, Optional

from fairseq.file_io import PathManager
from omegaconf import OmegaConf, open_dict

from ...atomic import PARTIAL_SUFFIX, atomic_path
from ...errors import PluginInputError
from ..formats.checkpoints import CheckpointLoadError, mapped_checkpoint

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "checkpoint_last.pt"
"""fairseq's `checkpoint.restore_file` default: resume from this file in save_dir if it exists."""
COMPARED_SECTIONS = ("model", "task", "criterion", "optimizer")
"""What a resumed run must keep: the model's structure and techniques, the data and the loss, and
the optimizer, whose saved hyperparameters (betas, weight decay) torch restores over the new ones."""
TAKES_EFFECT_ON_RESUME = {"optimizer": ("lr",)}
"""Keys of the compared sections that do take effect: fairseq's scheduler sets the learning rate
at every update (the key follows `optimization.lr`)."""
COPY_CHUNK_BYTES = 16 << 20


class ResumeError(PluginInputError):
    """A run cannot resume from its save_dir as configured; the message names the file or key."""


def copy_atomically(source: str, destination: str) -> bool:
    """Copies `source` to `destination` through a partial file renamed into place (fsynced first),
    so `destination` is always either its previous content or a complete copy."""
    with atomic_path(destination) as temporary:
        with open(source, "rb") as reading, open(temporary, "wb") as writing:
            shutil.copyfileobj(reading, writing, COPY_CHUNK_BYTES)
            writing.flush()
            os.fsync(writing.fileno())
    return True


def install_atomic_checkpoint_copies() -> None:
    """Makes fairseq's `PathManager.copy`, with which `save_checkpoint` makes checkpoint_last.pt and
    the other copies of each saved checkpoint, atomic for local files; remote paths (iopath
    handlers) keep fairseq's own copy."""
    stock_copy = PathManager.copy
    if getattr(stock_copy, "atomic", False):
        return

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(src_path) or PathManager.path_requires_pathmanager(dst_path):
            return stock_copy(src_path, dst_path, overwrite)
        return copy_atomically(src_path, dst_path)

    copy.atomic = True
    PathManager.copy = staticmethod(copy)


def is_training_checkpoint(checkpoint) -> bool:
    """Whether a loaded file is a checkpoint fairseq's trainer wrote (a run can resume from it)."""
    return (isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict)
            and isinstance(checkpoint.get("cfg"), dict) and bool(checkpoint.get("optimizer_history")))


def read_training_checkpoint(path: Path):
    """The checkpoint at `path`, or raises CheckpointLoadError saying why it is unusable. Its
    tensors are memory-mapped, not read: the checks need only its config and history, and fairseq
    reads the whole file itself when it resumes (1.2 GB at XLS-R size). A file cut short has lost
    the index at its end, so it still fails here."""
    checkpoint = mapped_checkpoint(str(path))
    if not is_training_checkpoint(checkpoint):
        raise CheckpointLoadError(f"{path}: not a checkpoint of a fairseq training run")
    return checkpoint


def remove_partial_copies(save_dir: Path) -> None:
    """Deletes the partial files of atomic writes killed part-way (a kill inside a save): they hold
    nothing complete, and at XLS-R size each takes a gigabyte."""
    for partial in sorted(save_dir.glob(f".checkpoint*.pt.*{PARTIAL_SUFFIX}")):
        logger.info("removing %s, left by a save that was killed part-way", partial)
        partial.unlink(missing_ok=True)  # another rank of the run may have removed it


def newest_complete_checkpoint(save_dir: Path, damaged: Path):
    """(path, checkpoint) of the most recently written training checkpoint in save_dir other than
    `damaged`, or None: fairseq writes all files of one save together, so the newest complete one
    holds the latest state that was saved completely."""
    candidates = [path for path in save_dir.glob("checkpoint*.pt") if path != damaged and path.is_file()]
    for path in sorted(candidates, key=lambda path: path.stat().st_mtime_ns, reverse=True):
        try:
            return path, read_training_checkpoint(path)
        except CheckpointLoadError:
            continue
    return None


def resume_checkpoint(checkpoint_cfg):
    """The checkpoint a run with the run's `checkpoint` config section resumes from, read before
    anything is built, or None for a fresh start: save_dir's checkpoint_last.pt when fairseq's
    `checkpoint.restore_file` is the default. A damaged checkpoint_last.pt is replaced, for this
    run, by the newest complete checkpoint in save_dir (`checkpoint.restore_file` then names it, one
    line says so); with none, the run stops with one line naming the file. Returns (path,
    checkpoint)."""
    if checkpoint_cfg is None or not checkpoint_cfg.get("save_dir") or checkpoint_cfg.get("restore_file") != LAST_CHECKPOINT:
        return None
    save_dir = Path(checkpoint_cfg.save_dir)
    if not save_dir.is_dir():
        return None
    remove_partial_copies(save_dir)
    last = save_dir / LAST_CHECKPOINT
    if not last.exists():
        return None
    try:
        return last, read_training_checkpoint(last)
    except CheckpointLoadError as error:
        problem = str(error)
    fallback = newest_complete_checkpoint(save_dir, last)
    if fallback is None:
        raise ResumeError(f"{problem}; checkpoint.save_dir holds no complete checkpoint to resume from: "
                          f"delete {last} to start afresh")
    path, checkpoint = fallback
    logger.warning("%s; resuming from %s (update %d), the newest complete checkpoint in checkpoint.save_dir",
                   problem, path, checkpoint["optimizer_history"][-1].get("num_updates", 0))
    with open_dict(checkpoint_cfg):
        checkpoint_cfg.restore_file = str(path)
    return path, checkpoint


def comparable(value):
    """A config value as both sides store it (enums as their names)."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(item) for item in value]
    return value


def refuse_changed_settings(sections: Mapping, path, checkpoint, recorded_model_keys: Iterable[str]) -> None:
    """Stops with one line at the first key of COMPARED_SECTIONS (`sections`: name -> this run's
    config section, None when unknown) whose value differs from the one `checkpoint` (at `path`)
    recorded; keys the checkpoint does not record (written by an older version) are not compared."""
    skipped = {"model": tuple(recorded_model_keys), **TAKES_EFFECT_ON_RESUME}
    for section in COMPARED_SECTIONS:
        recorded = checkpoint["cfg"].get(section)
        if sections.get(section) is None or not isinstance(recorded, dict):
            continue
        values = OmegaConf.to_container(sections[section], resolve=True, enum_to_str=True)
        for key, value in values.items():
            if key in skipped.get(section, ()) or key not in recorded:
                continue
            if comparable(value) != comparable(recorded[key]):
                raise ResumeError(
                    f"{section}.{key}={value} differs from the {recorded[key]} that {path} was trained with: a "
                    f"resumed run keeps it (the checkpoint holds what it made); set it back, or train in a new "
                    f"checkpoint.save_dir")


def check_resumed_run(checkpoint_cfg, sections: Mapping, recorded_model_keys: Iterable[str]) -> Optional[Path]:
    """Before a training run builds its model: the checkpoint it resumes from is readable (or
    replaced by the newest complete one) and was trained with the same settings (`sections`, as
    refuse_changed_settings takes them). Returns the checkpoint's path, None for a fresh start."""
    found = resume_checkpoint(checkpoint_cfg)
    if found is None:
        return None
    path, checkpoint = found
    refuse_changed_settings(sections, path, checkpoint, recorded_model_keys)
    return path
