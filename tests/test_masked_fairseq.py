"""Masks in real fairseq runs: a mask from `fairseq-subnets prune` fixed through
`+model.mask_path` in stock fairseq-hydra-train, kept in every checkpoint (resuming after a kill is
in test_reproducible_training), decoded by stock fairseq-generate, and exported to a plain checkpoint that stock fairseq loads without the
plugin and that gives the masked model's outputs."""
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import (
    assert_decodes_and_exports_to_stock_fairseq, new_run_config, stored_masks_and_baked_weights,
)
from fairseq_subnets import USER_DIR

pytestmark = pytest.mark.slow

SPARSITY = 0.6


@pytest.fixture(scope="module")
def masked_run(skeleton_run, tmp_path_factory):
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.runner import hydra_train

    settings, result = skeleton_run
    out = tmp_path_factory.mktemp("masked")
    mask_path = out / "mask.safetensors"
    assert cli(["prune", result.pretrained_checkpoint, "--method", "global-l1",
                "--sparsity", str(SPARSITY), "--out", str(mask_path)]) == 0
    overrides = [
        f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / settings.language}",
        f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={out / 'run'}",
        f"+model.mask_path={mask_path}", "dataset.validate_interval_updates=10",
        "checkpoint.save_interval_updates=10",
    ]
    hydra_train("tiny", overrides + ["optimization.max_update=20"], out / "train.log")
    return settings, result, mask_path, out / "run"


def test_every_checkpoint_holds_the_mask_with_pruned_weights_exactly_zero(masked_run):
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    _, _, mask_path, run_dir = masked_run
    expected = load_mask_file(str(mask_path)).masks
    checkpoints = sorted(run_dir.glob("checkpoint*.pt"))
    assert len(checkpoints) >= 2
    for checkpoint in checkpoints:
        masks, baked = stored_masks_and_baked_weights(checkpoint)
        assert masks.keys() == expected.keys()
        for name, mask in expected.items():
            assert torch.equal(masks[name], mask), (checkpoint, name)
            weight = baked[W2V_PREFIX + name]
            assert torch.count_nonzero(weight[~mask]) == 0, (checkpoint, name)
            assert torch.count_nonzero(weight[mask]) > 0


def test_fairseq_generate_decodes_the_masked_checkpoint_and_its_export_loads_in_stock_fairseq(masked_run, tmp_path):
    settings, result, _, run_dir = masked_run
    assert_decodes_and_exports_to_stock_fairseq(run_dir / "checkpoint_last.pt",
                                                Path(result.corpus_dir) / settings.language, tmp_path)


def test_model_built_without_the_mask_file_takes_the_masks_from_the_checkpoint(masked_run):
    from fairseq import checkpoint_utils

    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.core.parametrize import masks_from_module
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    settings, result, mask_path, run_dir = masked_run
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(run_dir / "checkpoint_last.pt")],
        arg_overrides={"data": str(Path(result.corpus_dir) / settings.language), "mask_path": None})
    masks = masks_from_module(models[0], prefix=W2V_PREFIX)
    expected = load_mask_file(str(mask_path)).masks
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[name], expected[name]) for name in expected)


def test_mask_of_another_architecture_fails_naming_the_first_mismatch(masked_run, tmp_path):
    """Building the model for training (not rebuilding it from a checkpoint, which ignores
    model.mask_path and takes the stored masks) checks the mask file against the model."""
    from fairseq import tasks
    from omegaconf import open_dict

    from fairseq_subnets.core.maskfile import MaskFileError, save_mask_file

    settings, result, _, run_dir = masked_run
    wrong = tmp_path / "wrong.safetensors"
    save_mask_file(str(wrong), {"encoder.layers.0.fc1.weight": torch.ones(7, 5, dtype=torch.bool)})
    cfg = new_run_config(run_dir / "checkpoint_last.pt", tmp_path / "run")
    with open_dict(cfg):
        cfg.task.data = str(Path(result.corpus_dir) / settings.language)
        cfg.model.mask_path = str(wrong)
    with pytest.raises(MaskFileError, match=r"wrong.safetensors.*encoder.layers.0.fc1.weight"):
        tasks.setup_task(cfg.task).build_model(cfg.model)