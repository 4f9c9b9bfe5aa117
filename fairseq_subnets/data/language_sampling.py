"""Which language each update of a multilingual run trains on (pure Python and numpy).

Multilingual fine-tuning here keeps every batch monolingual (per-language heads, masks and
pathways need one language per forward pass) and samples the language of each update with
probability p_l proportional to n_l ** alpha, where n_l is the number of *training utterances* of
language l (Yang et al. 2023; alpha = 1 follows the data, alpha = 0 is uniform, alpha = 0.5 by
default lifts small languages). Small languages are therefore revisited (their batches cycle)
and large ones subsampled within an epoch.

fairseq shards the epoch's list of batches round-robin over the ranks and each rank groups
`update_freq` consecutive batches of its shard into one update, so update u consists of global
batches [u * B, (u + 1) * B) with B = world_size * update_freq. An epoch is therefore planned as
blocks of B consecutive batches of one language: every rank trains the same language in every
update, and the list length is a multiple of B, so fairseq never pads a shard with an empty batch.
"""
from collections import Counter
from dataclasses import dataclass

import numpy as np


class LanguageSamplingError(ValueError):
    """Sampling settings that cannot work; the message names the setting or language."""


def check_sampling_alpha(alpha):
    if alpha < 0:
        raise LanguageSamplingError(
            f"language sampling alpha={alpha} is negative; use 0 (uniform) to 1 (proportional to the data)")


def language_probabilities(sizes, alpha):
    """{language: p} with p proportional to sizes[language] ** alpha (sizes: training utterances)."""
    check_sampling_alpha(alpha)
    empty = [language for language, size in sizes.items() if size <= 0]
    if empty:
        raise LanguageSamplingError(f"no training utterances for language(s) {', '.join(empty)}")
    weights = {language: float(size) ** alpha for language, size in sizes.items()}
    total = sum(weights.values())
    return {language: weight / total for language, weight in weights.items()}


@dataclass(frozen=True)
class EpochPlan:
    """The batches of one epoch in training order, in blocks of `block_size` of one language."""
    languages: tuple
    """Every language that could be drawn, in the order of the probabilities."""
    block_size: int
    block_languages: tuple
    """The language of each block, i.e. of each update."""
    batches: tuple

    def language_shares(self):
        """{language: realised fraction of the epoch's updates}, every planned language included."""
        counts = Counter(self.block_languages)
        return {language: counts[language] / len(self.block_languages) for language in self.languages}


def plan_epoch(batches_by_language, probabilities, block_size, seed, epoch):
    """An EpochPlan as long as the data (total batches // block_size blocks, at least one).

    batches_by_language: {language: [batch, ...]}, each batch a list of dataset indices;
    probabilities: {language: p} (see language_probabilities); block_size: world_size * update_freq.
    The same arguments give the same plan on every rank and after a resume.
    """
    if block_size < 1:
        raise LanguageSamplingError(f"block_size={block_size}: need at least one batch per update")
    languages = list(probabilities)
    missing = [language for language in languages if not batches_by_language.get(language)]
    if missing:
        raise LanguageSamplingError(
            f"no training batch for language(s) {', '.join(missing)} (every utterance filtered out?)")
    total_batches = sum(len(batches_by_language[language]) for language in languages)
    blocks = max(1, total_batches // block_size)
    choice_rng = np.random.default_rng([seed, epoch])
    drawn = choice_rng.choice(len(languages), size=blocks, p=[probabilities[language] for language in languages])
    streams = {language: cycled_in_random_order(batches_by_language[language], np.random.default_rng([seed, epoch, i + 1]))
               for i, language in enumerate(languages)}
    block_languages = tuple(languages[i] for i in drawn)
    batches = tuple(next(streams[language]) for language in block_languages for _ in range(block_size))
    return EpochPlan(languages=tuple(languages), block_size=block_size, block_languages=block_languages, batches=batches)


def cycled_in_random_order(items, rng):
    """Yields the items forever, each pass in a new random order."""
    while True:
        for position in rng.permutation(len(items)):
            yield items[position]
