"""What makes the plugin's tasks give the same checkpoints and validation losses run after run, at
any one thread count, on CPU: mixed into each task before its fairseq base (ReproducibleSteps).

Three gaps of stock fairseq are closed here:
  * Training masks (time_masking): every training step draws its masks for its update and its
    utterances.
  * Validation draws: fairseq reseeds torch before each training step but never before a
    validation step, and wav2vec2 draws its masks there from OS entropy, so two runs report
    different validation losses. Each validation step here draws from a seed derived from the
    run's seed and the update count: masks per utterance (as in training, from their own stream),
    torch's draws (wav2vec2's negatives) inside a saved and restored torch state, so the training
    stream never sees validation.
  * Multi-threaded CPU kernels: with more than one thread, torch's CPU `index_put_` with
    accumulation (the backward of indexing, e.g. wav2vec2's negatives) adds floats from several
    threads atomically, in whatever order the threads arrive, so the sums differ in their last
    bits from run to run. torch's deterministic mode switches such kernels to fixed-order ones.
    It is turned on once the model is seen on the CPU (a GPU run keeps its fast kernels) and warns
    instead of failing where a kernel has no deterministic version.
"""
from contextlib import contextmanager

import numpy as np
import torch
from fairseq.utils import set_torch_seed

from .run_config import run_setting
from .time_masking import masks_drawn_for

VALIDATION_STREAM = 1
"""Keys validation's seeds apart from any seed of the run's training draws."""


def validation_seed(seed, *keys):
    """A 32-bit seed derived from the run's seed and `keys` (ints), stable across processes and
    versions (numpy's SeedSequence, unlike Python's salted hash for strings)."""
    return int(np.random.SeedSequence([int(seed), VALIDATION_STREAM, *map(int, keys)]).generate_state(1)[0])


def use_deterministic_cpu_kernels(model):
    """torch's deterministic kernels from here on in this process when `model` runs on the CPU."""
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type == "cpu" and not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def validation_draws(model, sample, fixed_seed=None):
    """Context for one validation step of a model with seeded masking: its masks and torch's draws
    come from the run's seed and the update count of the last training step (validation follows
    one in fairseq, on resume too), or from `fixed_seed` alone (`dataset.fixed_validation_seed`: every
    validation draws alike); torch's state is restored afterwards. A model without seeded masking
    (a stock model) keeps stock behaviour."""
    masking = getattr(model, "seeded_masking", None)
    if masking is None or sample is None or "id" not in sample:
        yield
        return
    if fixed_seed is None:
        seed, update = masking.seed, masking.updates_done
    else:
        seed, update = fixed_seed, 0
    with set_torch_seed(validation_seed(seed, update)), \
            masking.drawn_for(update, sample["id"], seed=validation_seed(seed)):
        yield


class ReproducibleSteps:
    """Mixed into a task before its fairseq base: training steps draw the model's masks for their
    update and utterances, validation steps from seeds of their own, and CPU runs use
    deterministic kernels."""

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        use_deterministic_cpu_kernels(model)
        with masks_drawn_for(model, update_num, sample):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)

    def valid_step(self, sample, model, criterion, **kwargs):
        use_deterministic_cpu_kernels(model)
        with validation_draws(model, sample, run_setting(self.cfg, "dataset.fixed_validation_seed")):
            return super().valid_step(sample, model, criterion, **kwargs)
