"""Distributed ranks compare their encoder masks: two real gloo processes, equal and unequal."""
import pytest
import torch.multiprocessing as mp

DIGEST_A = "ab" * 32
DIGEST_B = "cd" * 32


def _rank(rank, init_file, digests, outcomes):
    import torch.distributed as dist

    from fairseq_subnets.plugin.tasks import check_masks_identical_across_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        check_masks_identical_across_ranks(digests[rank])
        outcomes[rank] = "same"
    except RuntimeError as error:
        outcomes[rank] = str(error)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("digests, identical", [((DIGEST_A, DIGEST_A), True), ((DIGEST_A, DIGEST_B), False)])
def test_every_rank_sees_whether_masks_match(tmp_path, digests, identical):
    import fairseq_subnets.plugin  # noqa: F401

    with mp.Manager() as manager:
        outcomes = manager.dict()
        mp.spawn(_rank, args=(str(tmp_path / "rendezvous"), digests, outcomes), nprocs=2)
        results = dict(outcomes)
    if identical:
        assert results == {0: "same", 1: "same"}
    else:
        for rank in (0, 1):
            assert "ranks hold different encoder masks" in results[rank]
            assert "rank 0: abababab" in results[rank] and "rank 1: cdcdcdcd" in results[rank]
