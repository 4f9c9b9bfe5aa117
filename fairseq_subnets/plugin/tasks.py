"""`subnets_audio_finetuning`: fairseq's audio fine-tuning task plus what our workflows need.

Additions to the stock task (every stock key keeps working):
- `build_generator` returns a greedy CTC decoder, so stock `fairseq-generate` decodes CTC models;
- manifests are validated when a split is loaded, so a broken manifest fails at start-up with the
  file and line, not deep inside a data worker;
- a batch-size limit smaller than the longest utterance fails with the flag to change;
- the model hears when an epoch begins (for `model.freeze_encoder_epochs`), and in distributed
  training every rank checks at each epoch that all ranks hold the identical mask;
- a model rebuilt from a checkpoint (fairseq-generate, export) takes its weights and masks from
  the checkpoint alone: `model.init_from` and `model.mask_path` are training-time inputs, not read.
"""
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask
from omegaconf import open_dict

from ..data.check import check_manifest_dir
from .generator import CtcGreedyGenerator

logger = logging.getLogger(__name__)

MAX_PROBLEMS_SHOWN = 20


TRAINING_ONLY_MODEL_KEYS = ("init_from", "mask_path")


class ManifestError(ValueError):
    """The manifest set of a split is unusable; the message lists the problems with file and line."""


@dataclass
class SubnetsAudioFinetuningConfig(AudioFinetuningConfig):
    check_manifests: bool = field(
        default=True,
        metadata={"help": "validate audio, labels and dictionary coverage of each split when it is loaded"},
    )


@register_task("subnets_audio_finetuning", dataclass=SubnetsAudioFinetuningConfig)
class SubnetsAudioFinetuningTask(AudioFinetuningTask):
    cfg: SubnetsAudioFinetuningConfig

    def __init__(self, cfg):
        if not os.path.isdir(cfg.data):
            raise ManifestError(
                f"task.data={cfg.data} is not a directory (working directory: {os.getcwd()}; "
                "Hydra changes it to hydra.run.dir, so pass an absolute path)"
            )
        super().__init__(cfg)

    def load_dataset(self, split, task_cfg=None, **kwargs):
        task_cfg = task_cfg or self.cfg
        if self.cfg.check_manifests and task_cfg.multi_corpus_keys is None:
            self.raise_on_manifest_problems(split)
        super().load_dataset(split, task_cfg, **kwargs)

    def raise_on_manifest_problems(self, split):
        problems = check_manifest_dir(self.cfg.data, splits=[split])
        if problems:
            shown = "\n".join(str(p) for p in problems[:MAX_PROBLEMS_SHOWN])
            more = len(problems) - MAX_PROBLEMS_SHOWN
            tail = f"\n... and {more} more" if more > 0 else ""
            raise ManifestError(
                f"split '{split}' of {self.cfg.data} has {len(problems)} problem(s) "
                f"(run `fairseq-subnets data check {self.cfg.data}`):\n{shown}{tail}"
            )

    def build_model(self, model_cfg, from_checkpoint=False):
        if from_checkpoint:
            with open_dict(model_cfg):
                for key in TRAINING_ONLY_MODEL_KEYS:
                    if model_cfg.get(key) is not None:
                        model_cfg[key] = None
        return super().build_model(model_cfg, from_checkpoint)

    def begin_epoch(self, epoch, model):
        super().begin_epoch(epoch, model)
        if hasattr(model, "begin_epoch"):
            model.begin_epoch(epoch)
        if hasattr(model, "mask_digest"):
            check_masks_identical_across_ranks(model.mask_digest())

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if self.cfg.autoregressive:
            return super().build_generator(models, args, seq_gen_cls, extra_gen_cls_kwargs, **kwargs)
        dictionary = self.target_dictionary
        return CtcGreedyGenerator(dictionary, blank_index=dictionary.index(self.blank_symbol))

    def get_batch_iterator(self, dataset, max_tokens=None, ignore_invalid_inputs=False, **kwargs):
        if max_tokens is not None and not ignore_invalid_inputs and len(dataset) > 0:
            longest = int(dataset.sizes.max())
            if longest > max_tokens:
                raise ValueError(
                    f"the longest utterance has {longest} samples but max_tokens is {max_tokens} "
                    "(fairseq-generate uses 12000, i.e. 0.75 s of 16 kHz audio, when neither "
                    "--max-tokens nor --batch-size is given): pass --max-tokens "
                    f"{max(longest, 1_600_000)} or dataset.max_tokens=..., or "
                    "--skip-invalid-size-inputs-valid-test to drop long utterances"
                )
        return super().get_batch_iterator(
            dataset, max_tokens=max_tokens, ignore_invalid_inputs=ignore_invalid_inputs, **kwargs
        )


def check_masks_identical_across_ranks(digest):
    """Raises on every rank unless all ranks of the distributed run hold the mask with `digest`."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world_size = dist.get_world_size()
    mine = torch.tensor(list(bytes.fromhex(digest or "00" * 32)), dtype=torch.uint8)
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(gathered, mine)
    digests = [bytes(t.tolist()).hex() for t in gathered]
    if len(set(digests)) > 1:
        listing = ", ".join(f"rank {rank}: {d[:16]}" for rank, d in enumerate(digests))
        raise RuntimeError(f"distributed ranks hold different encoder masks ({listing})")
    logger.info("encoder masks identical on all %d ranks (sha256 %s)", world_size, digest[:16] or "none")
