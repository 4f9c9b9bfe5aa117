"""Downstream fine-tuning (Storey et al. 2025) in stock fairseq-hydra-train: start from the
skeleton's Spanish CTC model, fix a mask, train on Catalan with the encoder frozen for the first
epoch; the same on 2 CPU ranks through `fairseq-subnets launch`."""
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import assert_pruned_weights_zero, new_run_config, stored_masks_and_baked_weights
from fairseq_subnets import USER_DIR

pytestmark = pytest.mark.slow

SPARSITY = 0.5
DOWNSTREAM = "ca"


@pytest.fixture(scope="module")
def upstream_mask(skeleton_run, tmp_path_factory):
    from fairseq_subnets.cli.main import main as cli

    _, result = skeleton_run
    mask_path = tmp_path_factory.mktemp("downstream_mask") / "es.mask"
    assert cli(["prune", result.finetuned_checkpoint, "--method", "global-l1",
                "--sparsity", str(SPARSITY), "--out", str(mask_path)]) == 0
    return mask_path


def downstream_overrides(result, mask_path, save_dir, language=DOWNSTREAM):
    return [
        f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / language}",
        f"model.w2v_path={result.pretrained_checkpoint}", f"+model.init_from={result.finetuned_checkpoint}",
        f"+model.mask_path={mask_path}", f"checkpoint.save_dir={save_dir}",
    ]


@pytest.fixture(scope="module")
def frozen_then_trained(skeleton_run, upstream_mask, tmp_path_factory):
    from fairseq_subnets.runner import hydra_train

    _, result = skeleton_run
    save_dir = tmp_path_factory.mktemp("downstream") / "run"
    log = hydra_train("tiny", downstream_overrides(result, upstream_mask, save_dir) + [
        "+model.freeze_encoder_epochs=1", "optimization.max_epoch=2", "optimization.max_update=1000",
        "checkpoint.save_interval=1", "checkpoint.no_epoch_checkpoints=false",
    ], save_dir.parent / "train.log")
    return result, save_dir, log


def encoder_weights(baked):
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    return {key: value for key, value in baked.items() if key.startswith(W2V_PREFIX)}


def test_encoder_is_bit_identical_after_the_frozen_epoch_and_trained_after(frozen_then_trained, upstream_mask):
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    result, save_dir, log = frozen_then_trained
    _, upstream = stored_masks_and_baked_weights(result.finetuned_checkpoint)
    masks = load_mask_file(str(upstream_mask)).masks
    start = encoder_weights(upstream)
    for name, mask in masks.items():
        start[W2V_PREFIX + name] = torch.where(mask, start[W2V_PREFIX + name], 0.0)
    _, after_frozen = stored_masks_and_baked_weights(save_dir / "checkpoint1.pt")
    _, after_trained = stored_masks_and_baked_weights(save_dir / "checkpoint2.pt")
    assert encoder_weights(after_frozen).keys() == start.keys()
    assert all(torch.equal(after_frozen[key], start[key]) for key in start)
    changed = [key for key in start if not torch.equal(after_trained[key], start[key])]
    assert len(changed) > len(start) // 2
    assert "epoch 1: encoder frozen" in log and "epoch 2: encoder trained" in log


def test_new_language_gets_a_new_output_layer_and_pruned_weights_stay_zero(frozen_then_trained, upstream_mask):
    from fairseq_subnets.core.maskfile import load_mask_file

    result, save_dir, log = frozen_then_trained
    dictionary = (Path(result.corpus_dir) / DOWNSTREAM / "dict.ltr.txt").read_text().splitlines()
    _, trained = stored_masks_and_baked_weights(save_dir / "checkpoint2.pt")
    assert trained["w2v_encoder.proj.weight"].shape[0] == len(dictionary) + 4  # + fairseq's special symbols
    assert "a new output layer" in log
    checkpoints = sorted(save_dir.glob("checkpoint*.pt"))
    assert {path.name for path in checkpoints} >= {"checkpoint1.pt", "checkpoint2.pt", "checkpoint_last.pt"}
    expected = load_mask_file(str(upstream_mask)).masks
    for checkpoint in checkpoints:
        assert_pruned_weights_zero(checkpoint, expected)


def build_downstream_model(result, language, save_dir, mask_path=None, output_layer="auto"):
    """The model fairseq-hydra-train would build for a new run in `save_dir`, built in this process
    through the task."""
    from fairseq import tasks
    from omegaconf import open_dict

    import fairseq_subnets.plugin  # noqa: F401

    cfg = new_run_config(result.finetuned_checkpoint, save_dir)
    with open_dict(cfg):
        cfg.task.data = str(Path(result.corpus_dir) / language)
        cfg.model.w2v_args = None
        cfg.model.w2v_path = "not-read"
        cfg.model.init_from = result.finetuned_checkpoint
        cfg.model.init_output_layer = output_layer
        cfg.model.mask_path = str(mask_path) if mask_path else None
    task = tasks.setup_task(cfg.task)
    return task.build_model(cfg.model)


def test_same_language_keeps_the_upstream_output_layer_and_encoder(skeleton_run, tmp_path):
    settings, result = skeleton_run
    model = build_downstream_model(result, settings.language, tmp_path)
    _, upstream = stored_masks_and_baked_weights(result.finetuned_checkpoint)
    state = model.state_dict()
    assert all(torch.equal(state[key], upstream[key]) for key in upstream if key.startswith("w2v_encoder."))


def test_output_layer_choice_is_explicit_when_it_cannot_be_inferred(skeleton_run, tmp_path):
    from fairseq_subnets.plugin.components.models import UpstreamCheckpointError

    settings, result = skeleton_run
    new_head = build_downstream_model(result, settings.language, tmp_path, output_layer="new")
    _, upstream = stored_masks_and_baked_weights(result.finetuned_checkpoint)
    assert not torch.equal(new_head.state_dict()["w2v_encoder.proj.weight"], upstream["w2v_encoder.proj.weight"])
    with pytest.raises(UpstreamCheckpointError, match="w2v_encoder.proj.weight has shape"):
        build_downstream_model(result, DOWNSTREAM, tmp_path, output_layer="keep")


def test_two_cpu_ranks_train_downstream_with_the_identical_mask(skeleton_run, upstream_mask, tmp_path):
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.runner import CONFIG_DIR

    _, result = skeleton_run
    save_dir = tmp_path / "ddp"
    status = cli(["launch", "--nprocs", "2", "--log-dir", str(tmp_path), "--",
                  "--config-dir", str(CONFIG_DIR / "finetune"), "--config-name", "tiny",
                  *downstream_overrides(result, upstream_mask, save_dir),
                  "+model.freeze_encoder_epochs=1", "optimization.max_epoch=2", "optimization.max_update=1000",
                  "checkpoint.save_interval=1"])
    assert status == 0
    rank0 = (tmp_path / "train_rank0.log").read_text()
    assert "encoder masks identical on all 2 ranks" in rank0
    assert "distributed_world_size': 2" in rank0 and "done training" in rank0
    assert_pruned_weights_zero(save_dir / "checkpoint_last.pt", load_mask_file(str(upstream_mask)).masks)


def test_launch_fails_loudly_when_a_rank_fails(tmp_path, capsys):
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.runner import CONFIG_DIR

    status = cli(["launch", "--nprocs", "2", "--log-dir", str(tmp_path), "--",
                  "--config-dir", str(CONFIG_DIR / "finetune"), "--config-name", "tiny",
                  f"common.user_dir={USER_DIR}", f"task.data={tmp_path / 'missing'}",
                  "model.w2v_path=missing.pt", f"checkpoint.save_dir={tmp_path / 'run'}"])
    assert status == 2
    error = capsys.readouterr().err
    assert "of 2 exited with" in error and "train_rank" in error
