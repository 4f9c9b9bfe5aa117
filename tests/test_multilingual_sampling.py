"""The language plan of multilingual training: monolingual blocks, p ~ n^alpha, the same language
on every rank in every update (fairseq's round-robin sharding and update_freq grouping replayed),
reproducible from seed and epoch."""
import math

import pytest

from fairseq_subnets.data.language_sampling import (
    LanguageSamplingError, language_probabilities, plan_epoch,
)

SIZES = {"es": 900, "ca": 400, "ast": 100}


def batches_of(sizes, batch_size=10):
    """{language: [batch]} with globally distinct indices, so a batch's language is recoverable."""
    batches, offset = {}, 0
    for language, size in sizes.items():
        batches[language] = [list(range(offset + start, offset + min(start + batch_size, size)))
                             for start in range(0, size, batch_size)]
        offset += size
    return batches


def language_of_index(sizes):
    owner, offset = {}, 0
    for language, size in sizes.items():
        owner.update({index: language for index in range(offset, offset + size)})
        offset += size
    return owner


def fairseq_updates(batches, world_size, update_freq):
    """What each rank trains in each update: fairseq's ShardedIterator takes every world_size-th
    batch from rank's offset, GroupedIterator groups update_freq consecutive ones per update."""
    shards = [batches[rank::world_size] for rank in range(world_size)]
    updates = len(shards[0]) // update_freq
    return [[shards[rank][u * update_freq:(u + 1) * update_freq] for rank in range(world_size)]
            for u in range(updates)]


def test_probabilities_follow_n_to_the_alpha():
    p = language_probabilities(SIZES, 0.5)
    assert p["es"] / p["ast"] == pytest.approx(3.0)
    assert p["ca"] / p["ast"] == pytest.approx(2.0)
    assert sum(p.values()) == pytest.approx(1.0)
    assert language_probabilities(SIZES, 0.0) == pytest.approx({language: 1 / 3 for language in SIZES})
    assert language_probabilities(SIZES, 1.0)["es"] == pytest.approx(0.9 / 1.4)


@pytest.mark.parametrize("sizes, alpha, named", [
    (SIZES, -0.1, "alpha=-0.1"),
    ({"es": 10, "ca": 0}, 0.5, "ca"),
])
def test_bad_sampling_settings_are_refused_with_the_setting_named(sizes, alpha, named):
    with pytest.raises(LanguageSamplingError, match=named):
        language_probabilities(sizes, alpha)


def test_a_language_without_batches_is_refused_by_name():
    with pytest.raises(LanguageSamplingError, match="ast"):
        plan_epoch({"es": [[0]], "ast": []}, {"es": 0.5, "ast": 0.5}, block_size=1, seed=1, epoch=1)


@pytest.mark.parametrize("world_size, update_freq", [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_every_batch_is_monolingual_and_every_rank_trains_the_same_language_in_each_update(world_size, update_freq):
    owner = language_of_index(SIZES)
    plan = plan_epoch(batches_of(SIZES), language_probabilities(SIZES, 0.5), world_size * update_freq, seed=3, epoch=2)
    assert len(plan.batches) % (world_size * update_freq) == 0  # no rank gets fairseq's empty filler batch
    updates = fairseq_updates(list(plan.batches), world_size, update_freq)
    assert len(updates) == len(plan.block_languages)
    for update, language in zip(updates, plan.block_languages):
        for rank_batches in update:
            assert len(rank_batches) == update_freq
            assert {owner[index] for batch in rank_batches for index in batch} == {language}
    assert len(set(plan.block_languages)) == len(SIZES)  # the mixing is real: every language occurs


def test_an_epoch_is_as_long_as_the_data():
    plan = plan_epoch(batches_of(SIZES), language_probabilities(SIZES, 0.5), block_size=4, seed=1, epoch=1)
    assert len(plan.block_languages) == sum(len(b) for b in batches_of(SIZES).values()) // 4 == 35


def test_small_languages_cycle_through_all_their_batches_before_repeating_one():
    sizes = {"es": 2000, "ast": 30}
    plan = plan_epoch(batches_of(sizes), {"es": 0.5, "ast": 0.5}, block_size=1, seed=1, epoch=1)
    ast_batches = [tuple(batch) for batch, language in zip(plan.batches, plan.block_languages) if language == "ast"]
    assert len(ast_batches) > 30
    assert len(set(ast_batches[:3])) == 3 and set(ast_batches[:3]) == set(map(tuple, batches_of(sizes)["ast"]))


def test_realised_frequencies_match_n_to_the_alpha_within_five_standard_errors():
    """Each block's language is an independent draw, so the count of language l over K blocks is
    Binomial(K, p_l); |share - p_l| < 5 sqrt(p_l (1 - p_l) / K) fails by chance with probability
    below 1e-6 per language. Pooled over 20 seeds x 50 epochs x 35 blocks = 35,000 draws."""
    probabilities = language_probabilities(SIZES, 0.5)
    counts = dict.fromkeys(SIZES, 0)
    draws = 0
    for seed in range(20):
        for epoch in range(1, 51):
            plan = plan_epoch(batches_of(SIZES), probabilities, block_size=4, seed=seed, epoch=epoch)
            for language in plan.block_languages:
                counts[language] += 1
            draws += len(plan.block_languages)
    for language, p in probabilities.items():
        bound = 5 * math.sqrt(p * (1 - p) / draws)
        assert abs(counts[language] / draws - p) < bound, (language, counts[language] / draws, p, bound)
    proportional = language_probabilities(SIZES, 1.0)
    assert abs(counts["ast"] / draws - proportional["ast"]) > 0.05  # alpha = 0.5 really lifts the small language


def test_shares_are_the_plan_and_list_every_language():
    plan = plan_epoch(batches_of(SIZES), language_probabilities(SIZES, 0.5), block_size=2, seed=5, epoch=1)
    shares = plan.language_shares()
    assert set(shares) == set(SIZES) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["es"] == plan.block_languages.count("es") / len(plan.block_languages)


def test_the_plan_is_reproducible_from_seed_and_epoch_and_changes_with_either():
    probabilities = language_probabilities(SIZES, 0.5)

    def plan(seed, epoch):
        return plan_epoch(batches_of(SIZES), probabilities, block_size=2, seed=seed, epoch=epoch)

    assert plan(1, 1) == plan(1, 1)
    assert plan(1, 2).block_languages != plan(1, 1).block_languages
    assert plan(2, 1).block_languages != plan(1, 1).block_languages
