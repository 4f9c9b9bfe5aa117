"""Combined techniques through stock fairseq commands: each combination of tests/combinations.py
(LoRA under learned masks, learned masks inside a fixed mask, lottery-ticket pruning with group
lasso over LoRA) trains through stock fairseq-hydra-train from a shipped tiny config with
overrides, decodes with stock fairseq-generate, and exports to a checkpoint that stock fairseq
loads without the plugin and that gives the unmerged model's logits. Two runs hold the three
combinations (LoRA under learned masks inside a fixed mask is the first two), each run shared by
every assertion on it. Resuming after a kill, bit for bit, is in
test_reproducible_training (one mode per combination); the invariants in-process are in
test_combined_techniques_model."""
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import assert_decodes_and_exports_to_stock_fairseq, stored_masks_and_baked_weights, two_at_a_time
from combinations import COMBINATIONS, PRUNING_TARGET, UPDATES, combination_arguments
from fairseq_subnets import USER_DIR

pytestmark = pytest.mark.slow

LANGUAGE = "ca"
FIXED_SPARSITY = 0.6
LEARNED_SPARSITY = 0.1
"""learned_masks_tiny's score_sparsity."""


@pytest.fixture(scope="module")
def fixed_mask(skeleton_run, tmp_path_factory):
    """A global-L1 mask of the pretrained model from `fairseq-subnets prune`."""
    from fairseq_subnets.cli.main import main as cli

    _, result = skeleton_run
    path = tmp_path_factory.mktemp("combined_mask") / "pretrained.mask"
    assert cli(["prune", result.pretrained_checkpoint, "--method", "global-l1", "--sparsity", str(FIXED_SPARSITY),
                "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def runs(skeleton_run, fixed_mask, tmp_path_factory):
    """name -> (save dir, log text) of each run of tests/combinations.py, UPDATES updates at 1
    thread, side by side."""
    from fairseq_subnets.runner import CONFIG_DIR, hydra_train

    _, result = skeleton_run
    out = tmp_path_factory.mktemp("combined_runs")

    def train(name):
        config_name, overrides = combination_arguments(name, fixed_mask)
        return hydra_train(config_name, [
            f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / LANGUAGE}",
            f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={out / name}",
            f"optimization.max_update={UPDATES}", *overrides], out / f"{name}.log",
            config_dir=CONFIG_DIR / "finetune", threads=1)

    logs = two_at_a_time(*((train, name) for name in COMBINATIONS))
    return {name: (out / name, log) for name, log in zip(COMBINATIONS, logs)}


def checkpoint_state(checkpoint):
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    return load_checkpoint(checkpoint)["model"]


def transforms_of(state, kind):
    """{module path: {state name: tensor}} of one transform kind in a state dict."""
    found = {}
    for key, value in state.items():
        if f".parametrizations.weight.0.{kind}." in key:
            module, rest = key.split(".parametrizations.weight.0.", 1)
            found.setdefault(module, {})[rest.rsplit(".", 1)[1]] = value
    return found


@pytest.mark.parametrize("name", COMBINATIONS)
def test_a_combined_run_decodes_with_stock_generate_and_exports_to_stock_fairseq_with_equal_outputs(
        name, runs, skeleton_run, tmp_path):
    _, result = skeleton_run
    save_dir, _ = runs[name]
    assert_decodes_and_exports_to_stock_fairseq(save_dir / "checkpoint_last.pt", Path(result.corpus_dir) / LANGUAGE,
                                                tmp_path)


def test_learned_masks_inside_a_fixed_mask_learn_among_its_kept_weights_and_leave_its_pruned_weights_zero(
        runs, fixed_mask):
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.core.pruning import pruned_count
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    save_dir, log = runs["tuner_with_learned_masks_in_fixed_mask"]
    fixed = load_mask_file(str(fixed_mask)).masks
    checkpoint = save_dir / "checkpoint_last.pt"
    masks, baked = stored_masks_and_baked_weights(checkpoint)
    assert masks.keys() == fixed.keys()
    scores = transforms_of(checkpoint_state(checkpoint), "score_mask")
    assert len(scores) == len(fixed)
    for name, kept in fixed.items():
        assert torch.count_nonzero(baked[W2V_PREFIX + name][~kept]) == 0, name
        assert not (masks[name] & ~kept).any(), name
        inside = int(kept.sum())
        assert inside - int(masks[name].sum()) == pruned_count(LEARNED_SPARSITY, inside), name
        assert torch.equal(scores[W2V_PREFIX + name[:-len(".weight")]]["within"], kept), name
    assert "of the weights the fixed mask keeps" in log


def test_a_tuner_with_learned_masks_trains_both_and_its_delta_is_masked(runs, skeleton_run):
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    _, result = skeleton_run
    save_dir, log = runs["tuner_with_learned_masks_in_fixed_mask"]
    checkpoint = save_dir / "checkpoint_last.pt"
    state = checkpoint_state(checkpoint)
    pretrained_state = checkpoint_state(result.pretrained_checkpoint)  # learned masks freeze the weights
    masks, baked = stored_masks_and_baked_weights(checkpoint)
    lora = transforms_of(state, "lora")
    assert lora and all(torch.count_nonzero(tensors["lora_B"]) > 0 for tensors in lora.values())  # it trained
    for module in lora:
        name = module[len(W2V_PREFIX):] + ".weight"
        pretrained = pretrained_state[name]  # the run stores only the weights its fixed mask keeps
        assert torch.count_nonzero(baked[module + ".weight"][~masks[name]]) == 0, name
        assert not torch.equal(baked[module + ".weight"], pretrained * masks[name]), name  # the delta is in
    assert "learned masks (ori init, matrix top-k)" in log and "tuner lora trains" in log


def test_pruning_and_group_lasso_over_a_tuner_reach_the_target_and_write_the_pruned_mask(runs):
    from fairseq_subnets.core.maskfile import load_mask_file
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    save_dir, log = runs["pruning_with_tuner"]
    checkpoint = save_dir / "checkpoint_last.pt"
    masks, baked = stored_masks_and_baked_weights(checkpoint)
    written = load_mask_file(str(save_dir / "pruned.mask")).masks
    assert written.keys() == masks.keys()
    for name, kept in written.items():
        assert torch.equal(masks[name], kept), name
        assert abs(1 - float(kept.float().mean()) - PRUNING_TARGET) < 0.02, name
        assert torch.count_nonzero(baked[W2V_PREFIX + name][~kept]) == 0, name
    lora = transforms_of(checkpoint_state(checkpoint), "lora")
    assert lora and all(torch.count_nonzero(tensors["lora_B"]) > 0 for tensors in lora.values())
    assert "pruning event 3 of 3" in log and "regulariser_group_lasso" in log
