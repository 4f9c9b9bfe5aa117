"""Shared fixtures: one real tiny pipeline run (synthesized speech -> stock fairseq-hydra-train
pretraining -> CTC fine-tuning through the plugin -> stock fairseq-generate), reused by every test
that needs real checkpoints, so the suite pays for it once."""
import pytest

from fairseq_subnets.demo import SkeletonSettings, run_skeleton


@pytest.fixture(scope="session")
def skeleton_run(tmp_path_factory):
    """Short schedule: 150 pretraining + 250 fine-tuning updates (300 reached 34% CER on 2026-11-29;
    the tests need a model that learned something, not a good one)."""
    settings = SkeletonSettings(
        out_dir=tmp_path_factory.mktemp("skeleton"),
        pretrain_updates=150,
        finetune_updates=250,
        finetune_lr=0.001,
        finetune_phase_ratio=(0.1, 0.6, 0.3),
    )
    return settings, run_skeleton(settings, say=lambda message: None)
