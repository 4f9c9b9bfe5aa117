"""`subnets_audio_pretraining`: stock wav2vec2 pretraining, made bit-reproducible on CPU.

Stock `audio_pretraining` with the stock `wav2vec2` model draws from two unseeded sources: the time
masks (see time_masking) and the random crops of utterances longer than `task.max_sample_size`,
which the raw-audio dataset's collater takes from numpy's global generator, whose state no
checkpoint keeps. This task changes only those two draws:
  * the model's masks come from the run's seed, the update and the utterance (time_masking);
  * each batch's crops come from the run's seed, the epoch and the batch's first utterance.
Everything else, the model and its checkpoint included, is stock: the model stays `wav2vec2`.
Like the fine-tuning task, it checks a run's start (its schedule, the checkpoint it resumes from:
plugin.components.tasks.check_training_start) before the model is built.

The dataset is built by the stock task, so the seeded crops are installed on the built dataset
instance rather than through a subclass (which would mean copying the stock `load_dataset`).
"""
import torch
from fairseq.data import data_utils
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model
from fairseq.tasks import register_task
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask

from ...component_names import PLUGIN_PRETRAINING_TASK
from .errors import one_line_errors
from .reproducible_steps import ReproducibleSteps
from .tasks import check_training_start
from .time_masking import install_seeded_masking


class SeededCrops:
    """Collates a raw-audio batch with its crops drawn from (seed, epoch, first utterance): the
    epoch arrives through `set_epoch`, which fairseq's batch iterator calls before any collation
    (also in data-loader workers, which get the dataset after it)."""

    def __init__(self, dataset, seed):
        self.stock_collater = dataset.collater
        self.stock_set_epoch = dataset.set_epoch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.stock_set_epoch(epoch)

    def collater(self, samples):
        first = int(samples[0]["id"]) if samples else 0
        with data_utils.numpy_seed(self.seed, self.epoch, first):
            return self.stock_collater(samples)


def install_seeded_crops(dataset, seed):
    crops = SeededCrops(dataset, seed)
    dataset.collater, dataset.set_epoch = crops.collater, crops.set_epoch
    return crops


@register_task(PLUGIN_PRETRAINING_TASK, dataclass=AudioPretrainingConfig)
class SubnetsAudioPretrainingTask(ReproducibleSteps, AudioPretrainingTask):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.seed = torch.initial_seed()  # common.seed: fairseq's train.py seeds torch just before

    def load_dataset(self, split, task_cfg=None, **kwargs):
        super().load_dataset(split, task_cfg, **kwargs)
        install_seeded_crops(self.datasets[split], self.seed)

    @one_line_errors
    def build_model(self, model_cfg, from_checkpoint=False):
        if not from_checkpoint:
            check_training_start(self.cfg, model_cfg)
        model = super().build_model(model_cfg, from_checkpoint)
        if isinstance(model, Wav2Vec2Model):
            model.seeded_masking = install_seeded_masking(model)
        return model
