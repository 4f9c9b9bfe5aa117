"""Bit-reproducible CPU training with the shipped tiny configs, through stock fairseq-hydra-train.

For each training mode one command runs twice from scratch: once uninterrupted, once killed with
SIGKILL at a random update and then simply run again (fairseq resumes from checkpoint_last.pt).
Both runs' first interval checkpoints (written before the kill) must be bit-identical, which is
"the same command twice gives the same checkpoint"; so must their final checkpoints: weights,
masks, Adam's state, the scheduler and the data position. The modes: wav2vec2 pretraining, plain
fine-tuning, fixed-mask fine-tuning, downstream fine-tuning with a frozen first epoch,
multilingual pathway training with per-language masks on shared weights (Adam with weight decay),
learned masks (S3-Router) with one top-k over all encoder matrices, AdaLoRA (its importance
averages and rank budget), and lottery-ticket pruning with group lasso killed between two pruning
events (its masks, rewind point, block norms and restarted learning-rate schedule).

Without seeded time masking (plugin.components.time_masking) every mode fails from the first masked update,
and pretraining also without seeded crops (plugin.components.pretraining).
"""
import random
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fairseq_subnets import USER_DIR
from interrupted_runs import (
    assert_bit_identical, interval_checkpoints, kill_at_random_update, start_training, training_state, wait_finished,
)

pytestmark = pytest.mark.slow

LANGUAGE = "ca"
"""The skeleton's smallest set: 20 updates per epoch with the tiny config."""
SAVE_EVERY = 4
FFN_TARGETS = "ffn"


@pytest.fixture(scope="module")
def masks(skeleton_run, tmp_path_factory):
    """Mask files from `fairseq-subnets prune`: of the pretrained model (fixed-mask fine-tuning),
    of the fine-tuned one (downstream), and two different FFN masks for two languages."""
    from fairseq_subnets.cli.main import main as cli

    _, result = skeleton_run
    out = tmp_path_factory.mktemp("reproducible_masks")
    wanted = {
        "pretrained": [result.pretrained_checkpoint, "--method", "global-l1", "--sparsity", "0.6"],
        "finetuned": [result.finetuned_checkpoint, "--method", "global-l1", "--sparsity", "0.5"],
        "es": [result.pretrained_checkpoint, "--method", "global-l1", "--sparsity", "0.5", "--targets", FFN_TARGETS],
        "ca": [result.pretrained_checkpoint, "--method", "random", "--sparsity", "0.5", "--targets", FFN_TARGETS],
    }
    for name, arguments in wanted.items():
        assert cli(["prune", *arguments, "--out", str(out / f"{name}.mask")]) == 0
    return {name: out / f"{name}.mask" for name in wanted}


def mode_arguments(mode, result, masks):
    """(config folder, config name, overrides) of one training mode, without the save dir."""
    from fairseq_subnets.runner import CONFIG_DIR

    finetune = CONFIG_DIR / "finetune"
    pretrained = [f"model.w2v_path={result.pretrained_checkpoint}"]
    one_language = [f"task.data={Path(result.corpus_dir) / LANGUAGE}", "optimization.max_update=12"]
    if mode == "pretraining":
        return CONFIG_DIR / "pretrain", "tiny", [f"task.data={Path(result.corpus_dir) / 'pretrain'}",
                                                 "optimization.max_update=12"]
    if mode == "finetuning":
        return finetune, "tiny", pretrained + one_language
    if mode == "fixed_mask":
        return finetune, "tiny", pretrained + one_language + [f"+model.mask_path={masks['pretrained']}"]
    if mode == "downstream_frozen_first_epoch":
        return finetune, "tiny", pretrained + [
            f"task.data={Path(result.corpus_dir) / LANGUAGE}", f"+model.init_from={result.finetuned_checkpoint}",
            f"+model.mask_path={masks['finetuned']}", "+model.freeze_encoder_epochs=1", "optimization.max_epoch=2",
            "optimization.max_update=1000"]
    if mode == "multilingual_language_masks":
        return finetune, "multilingual_tiny", pretrained + [
            f"task.data={result.corpus_dir}", "task.languages=[es,ca]", "optimization.max_update=12",
            f"+model.language_mask_files=[es:{masks['es']},ca:{masks['ca']}]", "+optimizer.weight_decay=0.01"]
    if mode == "learned_masks_global_top_k":
        return finetune, "learned_masks_tiny", pretrained + one_language + ["model.score_scope=global",
                                                                             "model.score_targets=all"]
    if mode == "tuner_adalora":
        return finetune, "adalora_tiny", pretrained + one_language + [
            "model.tuner_warmup_updates=2", "model.tuner_final_updates=3", "model.tuner_interval=2"]
    if mode == "iterative_pruning_lth":  # events at updates 4, 8 and 12: the kill falls between two
        return finetune, "lth_tiny", pretrained + one_language + [
            "model.pruning_interval=4", "model.pruning_fraction=0.5", "model.pruning_target_sparsity=0.8",
            "model.group_lasso_strength=0.01", "lr_scheduler.warmup_steps=1", "lr_scheduler.hold_steps=2",
            "lr_scheduler.decay_steps=1"]
    raise ValueError(mode)


MODES = ["pretraining", "finetuning", "fixed_mask", "downstream_frozen_first_epoch", "multilingual_language_masks",
         "learned_masks_global_top_k", "tuner_adalora", "iterative_pruning_lth"]


def killed_and_rerun(mode, result, masks, work):
    """One mode's command run uninterrupted and, side by side, killed at a random update and run
    again, each with one thread: bit-identity holds for the same command with the same thread
    count (float sums depend on the split). The kill point's seed is drawn afresh (not from the
    global `random`, which other code may seed), and named when the rerun does not resume where
    the kill left it. Returns the two save dirs."""
    config_dir, config_name, arguments = mode_arguments(mode, result, masks)
    arguments = [f"common.user_dir={USER_DIR}", *arguments, f"checkpoint.save_interval_updates={SAVE_EVERY}",
                 "checkpoint.keep_interval_updates=-1", "dataset.disable_validation=true"]
    uninterrupted, interrupted = work / "uninterrupted", work / "interrupted"
    reference = start_training(config_dir, config_name, arguments + [f"checkpoint.save_dir={uninterrupted}"],
                               work / "uninterrupted.log", threads=1)
    seed = secrets.randbits(30)
    rerun_arguments = arguments + [f"checkpoint.save_dir={interrupted}"]
    killed = start_training(config_dir, config_name, rerun_arguments, work / "killed.log", threads=1)
    kill_at_random_update(killed, interrupted, random.Random(seed))
    resumed_from = training_state(interrupted / "checkpoint_last.pt")["num_updates"]
    wait_finished(start_training(config_dir, config_name, rerun_arguments, work / "rerun.log", threads=1),
                  work / "rerun.log")
    log = (work / "rerun.log").read_text()
    assert f"@ {resumed_from} updates" in log, f"kill seed {seed}: the rerun did not resume from update {resumed_from}"
    wait_finished(reference, work / "uninterrupted.log")
    return uninterrupted, interrupted


@pytest.fixture(scope="module")
def mode_runs(skeleton_run, masks, tmp_path_factory):
    """Every mode's runs, two modes at a time (forked from the session's fork server, so fairseq's
    import, once most of each run, is paid once): a mode leaves a core idle while its rerun goes
    alone. Mode -> its future."""
    _, result = skeleton_run
    with ThreadPoolExecutor(2) as pool:
        running = {mode: pool.submit(killed_and_rerun, mode, result, masks, tmp_path_factory.mktemp(mode))
                   for mode in MODES}
        for future in running.values():
            future.exception()
    return running


@pytest.mark.parametrize("mode", MODES)
def test_a_run_killed_at_a_random_update_and_rerun_ends_bit_identical_to_an_uninterrupted_run(mode, mode_runs):
    uninterrupted, interrupted = mode_runs[mode].result()
    first = min(interval_checkpoints(uninterrupted))
    assert_bit_identical(interval_checkpoints(uninterrupted)[first], interval_checkpoints(interrupted)[first])
    assert_bit_identical(uninterrupted / "checkpoint_last.pt", interrupted / "checkpoint_last.pt")
