"""How many updates an epoch takes, counted by fairseq's own batching.

fairseq stops at max_epoch or max_update, whichever comes first, while learning-rate schedules such
as tri_stage place their phases by max_update; a run specified in epochs (Storey et al.: one frozen
epoch, then N) therefore needs the exact update count. We build the task's real batch iterator for
the split instead of re-deriving fairseq's size-bucketed batching.
"""
import logging
import math

from omegaconf import OmegaConf

from .tasks import SubnetsAudioFinetuningConfig, SubnetsAudioFinetuningTask


def updates_per_epoch(data_dir, max_tokens, split="train", world_size=1, update_freq=1, max_sample_size=None):
    """Optimizer updates in one epoch of `split` on each of `world_size` ranks."""
    logging.getLogger("fairseq").setLevel(logging.WARNING)  # the task's per-split chatter
    cfg = OmegaConf.structured(
        SubnetsAudioFinetuningConfig(data=str(data_dir), labels="ltr", max_sample_size=max_sample_size, tpu=False)
    )
    task = SubnetsAudioFinetuningTask.setup_task(cfg)
    task.load_dataset(split)
    batches = task.get_batch_iterator(
        task.dataset(split), max_tokens=max_tokens, ignore_invalid_inputs=True,
        required_batch_size_multiple=1, num_shards=world_size, shard_id=0,
    )
    return math.ceil(len(batches) / update_freq)
