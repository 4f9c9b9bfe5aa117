"""How many updates an epoch takes, counted by fairseq's own batching.

fairseq stops at max_epoch or max_update, whichever comes first, while learning-rate schedules such
as tri_stage place their phases by max_update; a run specified in epochs (Storey et al.: one frozen
epoch, then N) therefore needs the exact update count. We build the task's real batch iterator for
the split instead of re-deriving fairseq's size-bucketed batching.
"""
import logging
import math
from contextlib import contextmanager

from omegaconf import OmegaConf

from ..components.tasks import SubnetsAudioFinetuningConfig, SubnetsAudioFinetuningTask


def updates_per_epoch(data_dir, max_tokens, split="train", world_size=1, update_freq=1, max_sample_size=None):
    """Optimizer updates in one epoch of `split` on each of `world_size` ranks."""
    cfg = OmegaConf.structured(
        SubnetsAudioFinetuningConfig(data=str(data_dir), labels="ltr", max_sample_size=max_sample_size, tpu=False)
    )
    with quieter(logging.getLogger("fairseq"), logging.WARNING):  # the task's per-split chatter
        task = SubnetsAudioFinetuningTask.setup_task(cfg)
        task.load_dataset(split)
        batches = task.get_batch_iterator(
            task.dataset(split), max_tokens=max_tokens, ignore_invalid_inputs=True,
            required_batch_size_multiple=1, num_shards=world_size, shard_id=0,
        )
    return math.ceil(len(batches) / update_freq)


@contextmanager
def quieter(logger: logging.Logger, level: int):
    """`logger` at `level` inside the block, at its own level again after it (the caller's logging
    is not ours to change for good)."""
    previous = logger.level
    logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)
