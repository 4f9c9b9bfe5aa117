"""Distributed ranks compare their encoder masks: two real gloo processes, equal and unequal.

Slow: each rank is a fresh interpreter that imports the plugin, and so fairseq. Both comparisons
run in the same two ranks, one after the other, so the module pays for two start-ups, not four."""
import pytest
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow

DIGEST_A = "ab" * 32
DIGEST_B = "cd" * 32
ROUNDS = {"identical": (DIGEST_A, DIGEST_A), "different": (DIGEST_A, DIGEST_B)}
"""The digests ranks 0 and 1 hold in each round."""


def _rank(rank, init_file, outcomes):
    import torch.distributed as dist

    from fairseq_subnets.techniques.extension import check_masks_identical_across_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        for name, digests in ROUNDS.items():
            try:
                check_masks_identical_across_ranks(digests[rank])
                outcomes[name, rank] = "same"
            except RuntimeError as error:
                outcomes[name, rank] = str(error)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """(round, rank) -> "same" or the error the rank raised."""
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_rank, args=(str(tmp_path_factory.mktemp("ranks") / "rendezvous"), shared), nprocs=2)
        return dict(shared)


def test_ranks_holding_the_same_masks_both_pass(outcomes):
    assert {rank: outcomes["identical", rank] for rank in (0, 1)} == {0: "same", 1: "same"}


def test_ranks_holding_different_masks_both_fail_naming_each_ranks_digest(outcomes):
    for rank in (0, 1):
        assert "ranks hold different encoder masks" in outcomes["different", rank]
        assert "rank 0: abababab" in outcomes["different", rank] and "rank 1: cdcdcdcd" in outcomes["different", rank]
