"""wav2vec2's time and channel masking drawn from the run's seed, the update and the utterance.

Stock `Wav2Vec2Model.apply_mask` calls `compute_mask_indices` without a seed, which then draws from
`np.random.default_rng(None)`: fresh OS entropy whatever `common.seed` says. Two runs of one
command differ from the first masked update on, and a run resumed after a kill cannot reproduce
the uninterrupted one. Everything else in a CPU fine-tuning run is already reproducible (fairseq
reseeds torch with `common.seed + update` before every update, and orders batches by seed and
epoch), so this is the one gap.

`compute_mask_indices` has a deterministic mode keyed by (seed, epoch, utterance index), which
fairseq's data2vec uses and wav2vec2 never turns on. Here it is turned on with the update number
in the epoch slot: the masks of an utterance depend only on the run's seed, the update and the
utterance's dataset index. A resumed run therefore draws exactly the masks the uninterrupted run
drew, and two ranks (which hold different utterances) draw different masks. Channel masks use the
negative update numbers, so they never share a random stream with the time masks.

The seed is torch's initial seed when the model is built: fairseq's train.py seeds torch with
`common.seed` just before it builds the model, on every rank and on resume alike.

The utterance indices reach the model through `masks_drawn_for`, which the plugin's tasks wrap
around every training step (reproducible_steps, which also seeds validation's masks). A model
trained through a task that does not (a stock task) keeps stock behaviour, and says so once.
"""
import logging
from contextlib import contextmanager, nullcontext

import torch
from fairseq.data.data_utils import compute_mask_indices
from fairseq.utils import index_put

logger = logging.getLogger(__name__)


class SeededMasking:
    """Replaces one wav2vec2 model's `apply_mask`; holds the run seed and the current draw."""

    def __init__(self, w2v_model, seed):
        self.w2v_model = w2v_model
        self.seed = seed
        self.stock_apply_mask = w2v_model.apply_mask
        self.update = None
        self.utterance_ids = None
        self.draw_seed = seed
        self.updates_done = 0
        self.warned_unseeded = False

    @contextmanager
    def drawn_for(self, update, utterance_ids, seed=None):
        """Masks drawn for this update and these utterances, from `seed` (None: the run's seed,
        as in training; validation passes one of its own). A training draw also records the
        update count its step reaches, which validation keys its draws on (wav2vec2 keeps no
        update count)."""
        self.update, self.utterance_ids = int(update), utterance_ids.detach().cpu()
        self.draw_seed = self.seed if seed is None else seed
        if seed is None:
            self.updates_done = self.update + 1
        try:
            yield
        finally:
            self.update = self.utterance_ids = None

    def __call__(self, x, padding_mask, mask_indices=None, mask_channel_indices=None):
        if self.utterance_ids is None:
            if not self.warned_unseeded:
                logger.warning("time masks drawn from OS entropy, as in stock fairseq: the task does not "
                               "tell the model which utterances it trains on (use subnets_audio_finetuning)")
                self.warned_unseeded = True
            return self.stock_apply_mask(x, padding_mask, mask_indices, mask_channel_indices)
        model = self.w2v_model
        batch, steps, channels = x.shape
        if model.mask_channel_prob > 0 and mask_channel_indices is None:
            mask_channel_indices = self.channel_mask(batch, channels).to(x.device).unsqueeze(1).expand(-1, steps, -1)
        if model.mask_channel_prob > 0 and model.mask_channel_before:
            x[mask_channel_indices] = 0
        if model.mask_prob > 0:
            if mask_indices is None:
                mask_indices = torch.from_numpy(self.time_mask(batch, steps, padding_mask)).to(x.device)
            x = index_put(x, mask_indices, model.mask_emb)
        else:
            mask_indices = None
        if model.mask_channel_prob > 0 and not model.mask_channel_before:
            x = index_put(x, mask_channel_indices, 0)
        return x, mask_indices

    def time_mask(self, batch, steps, padding_mask):
        model = self.w2v_model
        return compute_mask_indices(
            (batch, steps), padding_mask, model.mask_prob, model.mask_length, model.mask_selection,
            model.mask_other, min_masks=2, no_overlap=model.no_mask_overlap, min_space=model.mask_min_space,
            require_same_masks=model.cfg.require_same_masks, mask_dropout=model.cfg.mask_dropout,
            seed=self.draw_seed, epoch=self.update, indices=self.utterance_ids,
        )

    def channel_mask(self, batch, channels):
        model = self.w2v_model
        return torch.from_numpy(compute_mask_indices(
            (batch, channels), None, model.mask_channel_prob, model.mask_channel_length,
            model.mask_channel_selection, model.mask_channel_other, no_overlap=model.no_mask_channel_overlap,
            min_space=model.mask_channel_min_space,
            seed=self.draw_seed, epoch=-1 - self.update, indices=self.utterance_ids,
        ))


def install_seeded_masking(w2v_model):
    """Makes `w2v_model` draw its masks through SeededMasking, seeded by torch's initial seed; a
    model that has it already (a pretrained model built by subnets_audio_pretraining) keeps it."""
    if not isinstance(w2v_model.apply_mask, SeededMasking):
        w2v_model.apply_mask = SeededMasking(w2v_model, torch.initial_seed())
    return w2v_model.apply_mask


def masks_drawn_for(model, update, sample):
    """Context for one training step: the model's masks are drawn for this update and these
    utterances. A model without seeded masking (a stock model) gets a no-op."""
    masking = getattr(model, "seeded_masking", None)
    if masking is None or sample is None or "id" not in sample:
        return nullcontext()
    return masking.drawn_for(update, sample["id"])
