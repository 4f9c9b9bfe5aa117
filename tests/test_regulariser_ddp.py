"""A regularisation term under DDP, through fairseq's own Trainer on 2 gloo ranks with different
batches (and so different sample sizes): the term's parameter moves by exactly lr x weight x its
gradient on both ranks, as in a one-process run, and the ranks end with identical parameters."""
import pytest
import torch
import torch.multiprocessing as mp

from test_model_transforms import ContributesATerm, criterion_and_batch

pytestmark = pytest.mark.slow

WEIGHT = 0.5
LR = 0.1


def train_one_step(rank, world_size, directory):
    import torch.distributed as dist
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.tasks import FairseqTask
    from fairseq.trainer import Trainer
    from omegaconf import OmegaConf

    from factory import TINY
    from fairseq_subnets.plugin.components.models import SubnetsWav2VecCtc
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, ctc_model_config

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank,
                                world_size=world_size)
    criterion, _, vocab = criterion_and_batch(f"test_norm:{WEIGHT}")
    torch.manual_seed(0)
    model_cfg = ctc_model_config(CtcModelSize(vocab=vocab, **TINY))
    model = SubnetsWav2VecCtc.build_model(model_cfg, type("Task", (), {"target_dictionary": range(vocab)})())
    model.contributor = ContributesATerm()
    cfg = OmegaConf.structured(FairseqConfig())
    cfg.model, cfg.task, cfg.criterion = model_cfg, OmegaConf.create({"_name": "unused"}), OmegaConf.create({})
    cfg.common.cpu = True
    cfg.distributed_training.ddp_backend = "legacy_ddp"
    cfg.distributed_training.distributed_world_size = world_size
    cfg.distributed_training.distributed_rank = rank
    cfg.optimization.lr = [LR]
    cfg.optimizer = OmegaConf.create({"_name": "sgd", "lr": [LR], "momentum": 0.0, "weight_decay": 0.0})
    cfg.lr_scheduler = OmegaConf.create({"_name": "fixed", "lr": [LR], "force_anneal": None, "lr_shrink": 0.1,
                                         "warmup_updates": 0})
    task = FairseqTask(cfg.task)
    trainer = Trainer(cfg, task, model, criterion)
    batch = batch_of_rank(rank, vocab)
    before = model.contributor.p.detach().clone()
    trainer.train_step([batch])
    torch.save({"before": before, "after": model.contributor.p.detach().clone(),
                "encoder": model.w2v_encoder.proj.weight.detach().clone()}, f"{directory}/rank{rank}.pt")


def batch_of_rank(rank, vocab):
    """Rank 0 has 2 utterances, rank 1 has 3: unequal sample sizes."""
    size = 2 + rank
    generator = torch.Generator().manual_seed(rank)
    return {"id": torch.arange(size), "nsentences": size, "ntokens": 3 * size,
            "net_input": {"source": torch.randn(size, 8000, generator=generator),
                          "padding_mask": torch.zeros(size, 8000, dtype=torch.bool)},
            "target": torch.randint(4, vocab, (size, 3), generator=generator),
            "target_lengths": torch.full((size,), 3)}


def test_the_regulariser_gradient_is_exact_on_two_ranks_with_different_sample_sizes(tmp_path):
    mp.spawn(train_one_step, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    expected = ranks[0]["before"] - LR * WEIGHT * 2 * ranks[0]["before"]
    for result in ranks:
        torch.testing.assert_close(result["after"], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(ranks[0]["encoder"], ranks[1]["encoder"])
