"""Bit-reproducible CPU training with the shipped tiny configs, through stock fairseq-hydra-train.

For each training mode one command runs twice from scratch: once uninterrupted, once killed with
SIGKILL at a random update and then simply run again (fairseq resumes from checkpoint_last.pt).
Both runs' first interval checkpoints (written before the kill) must be bit-identical, which is
"the same command twice gives the same checkpoint"; so must their final checkpoints: weights,
masks, Adam's state, the scheduler and the data position; and so must every validation's results.
The runs read a small corpus in small batches, so that their updates span several epochs, each
ending with a validation (as does each checkpoint), at a fraction of a full batch's cost. Every
mode runs at 1 thread; TWO_THREAD_MODES also at 2, where floating-point sums are split between
threads. The modes: wav2vec2 pretraining, plain fine-tuning, fixed-mask fine-tuning, downstream
fine-tuning with a frozen first epoch, multilingual pathway training with per-language masks on
shared weights (Adam with weight decay), learned masks (S3-Router) with one top-k over all encoder
matrices, AdaLoRA (its importance averages and rank budget), lottery-ticket pruning with group
lasso killed between two pruning events (its masks, rewind point, block norms and restarted
learning-rate schedule), and the three combinations of techniques in the two runs of
tests/combinations.py: LoRA under learned masks inside a fixed mask (a tuner with learned masks,
and learned masks inside a fixed mask), and lottery-ticket pruning with group lasso over LoRA.

Without seeded time masking (plugin.components.time_masking) every mode fails from the first masked update,
and pretraining also without seeded crops (plugin.components.pretraining), without seeded validation draws
(its validation masks and negatives, plugin.components.reproducible_steps) and, at 2 threads, without
deterministic CPU kernels (the same module).
"""
import random
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fairseq_subnets import USER_DIR
from combinations import COMBINATIONS, combination_arguments
from interrupted_runs import (
    assert_bit_identical, interval_checkpoints, kill_at_random_update, start_training, training_state, wait_finished,
)

pytestmark = pytest.mark.slow

LANGUAGE = "ca"
SMALL_SPLITS = {"train": 6, "valid": 4}
"""Utterances kept per split of each corpus folder."""
BATCH_SIZE = 2
"""Utterances per batch, in every mode: 3 updates per epoch (6 in the multilingual mode, whose
epoch holds both languages), so MAX_UPDATE updates span several epochs. Two, not one, so that
pretraining crops a batch's longer utterance to the shorter one (the seeded crops)."""
MAX_UPDATE = 15
SAVE_EVERY = 5
"""fairseq writes no interval checkpoint at an epoch's last update (the epoch's save takes its
place), and the kill falls between the first two interval checkpoints: so neither SAVE_EVERY nor
twice it may be a multiple of an epoch's length (checked: both interval checkpoints must exist)."""
FFN_TARGETS = "ffn"
TWO_THREAD_MODES = ["pretraining", "learned_masks_global_top_k"]
"""The modes also run at 2 threads: pretraining, whose negatives' backward summed in thread order
before the plugin turned on deterministic kernels, and one fine-tuning mode with a global top-k.
Every mode at 2 threads would double the module's time."""


@pytest.fixture(scope="module")
def small_corpus(skeleton_run, tmp_path_factory):
    """The skeleton corpus's pretraining, Spanish and Catalan folders cut to SMALL_SPLITS (the
    audio stays where it is: a manifest's first line names its folder)."""
    _, result = skeleton_run
    out = tmp_path_factory.mktemp("small_corpus")
    for folder in ["pretrain", "es", LANGUAGE]:
        (out / folder).mkdir()
        for path in (Path(result.corpus_dir) / folder).iterdir():
            kind = path.name.split(".")[0]  # a split (train.tsv, train.ltr, ...) or the dictionary
            kept = SMALL_SPLITS.get(kind)
            if kept is None and kind != "dict":
                continue
            lines = path.read_text().splitlines(keepends=True)
            header = 1 if path.suffix == ".tsv" else 0
            (out / folder / path.name).write_text("".join(lines if kept is None else lines[:header + kept]))
    return out


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


def mode_arguments(mode, result, masks, corpus):
    """(config folder, config name, overrides) of one training mode, without the save dir;
    `corpus`: the small corpus."""
    from fairseq_subnets.runner import CONFIG_DIR

    finetune = CONFIG_DIR / "finetune"
    pretrained = [f"model.w2v_path={result.pretrained_checkpoint}"]
    one_language = [f"task.data={corpus / LANGUAGE}", f"optimization.max_update={MAX_UPDATE}"]
    if mode == "pretraining":
        return CONFIG_DIR / "pretrain", "tiny", [f"task.data={corpus / 'pretrain'}",
                                                 f"optimization.max_update={MAX_UPDATE}"]
    if mode == "finetuning":
        return finetune, "tiny", pretrained + one_language
    if mode == "fixed_mask":
        return finetune, "tiny", pretrained + one_language + [f"+model.mask_path={masks['pretrained']}"]
    if mode == "downstream_frozen_first_epoch":
        return finetune, "tiny", pretrained + [
            f"task.data={corpus / LANGUAGE}", f"+model.init_from={result.finetuned_checkpoint}",
            f"+model.mask_path={masks['finetuned']}", "+model.freeze_encoder_epochs=1", "optimization.max_epoch=4",
            "optimization.max_update=1000"]
    if mode == "multilingual_language_masks":
        return finetune, "multilingual_tiny", pretrained + [
            f"task.data={corpus}", "task.languages=[es,ca]", f"optimization.max_update={MAX_UPDATE}",
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
    if mode in COMBINATIONS:
        config_name, overrides = combination_arguments(mode, masks["pretrained"])
        return finetune, config_name, pretrained + one_language + overrides
    raise ValueError(mode)


MODES = ["pretraining", "finetuning", "fixed_mask", "downstream_frozen_first_epoch", "multilingual_language_masks",
         "learned_masks_global_top_k", "tuner_adalora", "iterative_pruning_lth", *COMBINATIONS]


RUNS = [(mode, 1) for mode in MODES] + [(mode, 2) for mode in TWO_THREAD_MODES]
"""(mode, threads) of every pair of runs."""
MIN_EPOCHS = 3
TIMING_KEYS = {"wps", "wall", "train_wall"}


def killed_and_rerun(mode, threads, result, masks, corpus, work):
    """One mode's command run uninterrupted and, side by side, killed at a random update and run
    again, each with `threads` threads: bit-identity holds for the same command with the same
    thread count (float sums depend on the split). Validation runs at each epoch's end and before
    each save. The kill point's seed is drawn afresh (not from the global `random`, which other
    code may seed), and named when the rerun does not resume where the kill left it. Returns the
    two save dirs."""
    config_dir, config_name, arguments = mode_arguments(mode, result, masks, corpus)
    arguments = [f"common.user_dir={USER_DIR}", *arguments, f"checkpoint.save_interval_updates={SAVE_EVERY}",
                 "checkpoint.keep_interval_updates=-1", "checkpoint.save_interval=1000", "dataset.validate_interval=1",
                 f"dataset.batch_size={BATCH_SIZE}"]
    uninterrupted, interrupted = work / "uninterrupted", work / "interrupted"
    reference = start_training(config_dir, config_name, arguments + [f"checkpoint.save_dir={uninterrupted}"],
                               work / "uninterrupted.log", threads=threads)
    seed = secrets.randbits(30)
    rerun_arguments = arguments + [f"checkpoint.save_dir={interrupted}"]
    killed = start_training(config_dir, config_name, rerun_arguments, work / "killed.log", threads=threads)
    kill_at_random_update(killed, interrupted, random.Random(seed))
    resumed_from = training_state(interrupted / "checkpoint_last.pt")["num_updates"]
    wait_finished(start_training(config_dir, config_name, rerun_arguments, work / "rerun.log", threads=threads),
                  work / "rerun.log")
    log = (work / "rerun.log").read_text()
    assert f"@ {resumed_from} updates" in log, f"kill seed {seed}: the rerun did not resume from update {resumed_from}"
    wait_finished(reference, work / "uninterrupted.log")
    return uninterrupted, interrupted


def validations(*log_paths):
    """{num_updates: the validation's logged results but timings} over fairseq logs in the order
    they were written; a validation logged twice (before a kill and again after the resume) must
    log the same results both times."""
    found = {}
    for path in log_paths:
        for line in Path(path).read_text(errors="replace").splitlines():
            if "| valid on '" not in line:
                continue
            fields = [part.strip().split(" ", 1) for part in line.split(" | ")[2:]]
            results = {key: value for key, value in fields if key not in TIMING_KEYS}
            results["epoch"] = line.split(" | ")[0].rsplit("epoch ", 1)[1]
            updates = int(results["num_updates"])
            assert found.setdefault(updates, results) == results, f"{path}: validation at update {updates} " \
                                                                   f"logged {results}, before {found[updates]}"
    return found


@pytest.fixture(scope="module")
def mode_runs(request, skeleton_run, masks, small_corpus, tmp_path_factory):
    """The runs of every mode a selected test checks (all of them unless `-k` narrows the
    selection), two modes at a time (forked from the session's fork server, so fairseq's import,
    once most of each run, is paid once): a mode leaves a core idle while its rerun goes alone.
    (mode, threads) -> its future."""
    _, result = skeleton_run
    chosen = {(item.callspec.params["mode"], item.callspec.params["threads"]) for item in request.session.items
              if getattr(item, "module", None) is request.module and hasattr(item, "callspec")}
    selected = [run for run in RUNS if run in chosen]
    with ThreadPoolExecutor(2) as pool:
        running = {(mode, threads): pool.submit(killed_and_rerun, mode, threads, result, masks, small_corpus,
                                                tmp_path_factory.mktemp(f"{mode}_{threads}threads"))
                   for mode, threads in selected}
        for future in running.values():
            future.exception()
    return running


@pytest.mark.parametrize("mode, threads", [pytest.param(mode, threads, id=f"{mode}-{threads}threads")
                                           for mode, threads in RUNS])
def test_a_run_killed_at_a_random_update_and_rerun_ends_bit_identical_to_an_uninterrupted_run(mode, threads,
                                                                                              mode_runs):
    uninterrupted, interrupted = mode_runs[mode, threads].result()
    saved = interval_checkpoints(uninterrupted)
    assert {SAVE_EVERY, 2 * SAVE_EVERY} <= saved.keys(), f"interval checkpoints at updates {sorted(saved)}"
    assert_bit_identical(saved[SAVE_EVERY], interval_checkpoints(interrupted)[SAVE_EVERY])
    assert_bit_identical(uninterrupted / "checkpoint_last.pt", interrupted / "checkpoint_last.pt")
    work = uninterrupted.parent
    reference = validations(work / "uninterrupted.log")
    assert len({results["epoch"] for results in reference.values()}) >= MIN_EPOCHS, \
        f"the run validated in fewer than {MIN_EPOCHS} epochs: {sorted(reference)}"
    assert validations(work / "killed.log", work / "rerun.log") == reference
