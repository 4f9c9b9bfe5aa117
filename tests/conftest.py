"""Shared fixtures: one real tiny pipeline run (synthesized speech -> stock fairseq-hydra-train
pretraining -> CTC fine-tuning through the plugin -> stock fairseq-generate), reused by every test
that needs real checkpoints, so the suite pays for it once."""
import pytest

from fairseq_subnets.demo import SkeletonSettings, run_skeleton


@pytest.fixture(scope="session")
def skeleton_run(tmp_path_factory):
    """Short schedule measured to reach ~40% CER: 150 pretraining + 300 fine-tuning updates."""
    settings = SkeletonSettings(
        out_dir=tmp_path_factory.mktemp("skeleton"),
        pretrain_updates=150,
        finetune_updates=300,
        finetune_lr=0.001,
        finetune_phase_ratio=(0.1, 0.6, 0.3),
    )
    return settings, run_skeleton(settings, say=lambda message: None)
