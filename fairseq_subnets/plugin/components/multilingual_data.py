"""The fairseq side of monolingual batches: one dataset over several languages' splits, and the
batch iterator that trains them in language blocks (see data.language_sampling for the plan)."""
import bisect

import numpy as np
from fairseq.data import FairseqDataset

from ...data.language_sampling import plan_epoch
from ...techniques.language_heads import LANGUAGE_KEY


class MixedLanguageBatchError(RuntimeError):
    """A batch mixed languages, which the plan never does: a bug, not a data problem."""


class MonolingualBatchDataset(FairseqDataset):
    """The same split of several languages side by side (global index = language offset + local
    index). Batches come from one language each; the collater uses that language's own collater
    and adds the language code to `net_input`."""

    def __init__(self, datasets_by_language):
        self.languages = list(datasets_by_language)
        self.datasets = list(datasets_by_language.values())
        self.offsets = np.cumsum([0] + [len(dataset) for dataset in self.datasets]).tolist()

    def __len__(self):
        return self.offsets[-1]

    def locate(self, index):
        """(language position, index within that language's dataset)."""
        position = bisect.bisect_right(self.offsets, index) - 1
        return position, index - self.offsets[position]

    def __getitem__(self, index):
        position, local = self.locate(index)
        item = self.datasets[position][local]
        item[LANGUAGE_KEY] = position
        return item

    def collater(self, samples):
        if not samples:
            return {}
        positions = {sample[LANGUAGE_KEY] for sample in samples}
        if len(positions) > 1:
            raise MixedLanguageBatchError(
                f"a batch mixes languages {sorted(self.languages[p] for p in positions)}")
        position = positions.pop()
        collated = self.datasets[position].collater(samples)
        if "net_input" in collated:
            collated["net_input"][LANGUAGE_KEY] = self.languages[position]
        return collated

    @property
    def sizes(self):
        return np.concatenate([dataset.sizes for dataset in self.datasets])

    def num_tokens(self, index):
        position, local = self.locate(index)
        return self.datasets[position].num_tokens(local)

    def size(self, index):
        position, local = self.locate(index)
        return self.datasets[position].size(local)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def language_sizes(self):
        """{language: utterances}: n_l of the sampling rule."""
        return {language: len(dataset) for language, dataset in zip(self.languages, self.datasets)}

    def batches_by_language(self, make_language_batches):
        """{language: [batch of global indices]}; make_language_batches(dataset) batches one language."""
        return {
            language: [np.asarray(batch) + offset for batch in make_language_batches(dataset)]
            for language, dataset, offset in zip(self.languages, self.datasets, self.offsets)
        }


def language_block_sampler(make_language_batches, probabilities, block_size_of_epoch, seed, on_plan):
    """A fairseq batch sampler (called with dataset and epoch) that returns the epoch's plan_epoch
    batches: monolingual blocks of world_size * update_freq batches, rebuilt every epoch from seed
    and epoch. fairseq's own batch shuffling must be off (it would break the blocks).
    make_language_batches(language_dataset, epoch) batches one language; on_plan(epoch, plan)
    hears each epoch's plan (for logging)."""

    def plan_batches(dataset, epoch):
        batches = dataset.batches_by_language(lambda language_dataset: make_language_batches(language_dataset, epoch))
        plan = plan_epoch(batches, probabilities, block_size_of_epoch(epoch), seed, epoch)
        on_plan(epoch, plan)
        return plan.batches

    return plan_batches


def all_batches_in_language_order(dataset, make_language_batches):
    """Every utterance once, in monolingual batches, language after language (validation, decoding)."""
    return [batch for batches in dataset.batches_by_language(make_language_batches).values() for batch in batches]
