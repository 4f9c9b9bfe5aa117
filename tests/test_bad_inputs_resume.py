"""The "Resuming a run" catalogue of docs/bad-inputs.md, one test per row, and what a resumed run
may change.

fairseq-hydra-train resumes from `checkpoint.save_dir/checkpoint_last.pt` when it exists
(plugin.components.resume). Each case first builds its starting run in this process as the command builds it
(test_bad_inputs_training.built_as_fairseq_hydra_train_builds) and saves what it built as the
trainer would, as checkpoint_last.pt; then the same command with one key changed must be refused
with one line naming the key and both values, before the model is built (the upstream model is not
read), and the unchanged command, or one that changes only keys that take effect on resume
(`optimization.max_update`, the learning rate), must build. The real command's line and the
resumed runs themselves are in tests/test_interrupted_saves.py.
"""
from dataclasses import dataclass
from typing import Sequence

import pytest
import torch

from test_bad_inputs_training import (  # noqa: F401  (inputs: a fixture)
    TRAIN_ERROR, RunCase, built_as_fairseq_hydra_train_builds, inputs, placeholders, substituted, training_arguments,
)

SAVE_DIR = "<SAVE_DIR>"


@dataclass(frozen=True)
class ResumeCase:
    id: str
    message: str
    """The stable prefix of the last stderr line; it names the key (or the file)."""
    started_with: Sequence[str]
    """fairseq-hydra-train overrides of the run that wrote checkpoint_last.pt."""
    resumed_with: Sequence[str]
    """What the rerun adds to them."""
    config_name: str = "tiny"


def changed(key, new, old):
    return TRAIN_ERROR + f"{key}={new} differs from the {old} that {SAVE_DIR}/checkpoint_last.pt was trained with"


LEARNED = ("+model.score_sparsity=0.1",)
PRUNING = ("+model.pruning_interval=4", "+model.pruning_target_sparsity=0.5")
LORA = ("+model.tuner=lora", "+model.tuner_r=4")
FIXED = ("+model.mask_path=<INPUTS>/tiny.mask",)
PATHWAYS = ("task.data=<INPUTS>/corpus", "task.languages=[es,ca]",
            "+model.language_mask_files=[es:<INPUTS>/es.mask,ca:<INPUTS>/ca.mask]")
RESUME_CASES = [
    ResumeCase("resume-score-sparsity-changed", changed("model.score_sparsity", 0.3, 0.1), LEARNED,
               ("model.score_sparsity=0.3", "optimization.max_update=700")),
    ResumeCase("resume-score-targets-changed", changed("model.score_targets", "all", "ffn"), LEARNED,
               ("+model.score_targets=all",)),
    ResumeCase("resume-mask-path-changed", changed("model.mask_path", "<INPUTS>/other.mask", "<INPUTS>/tiny.mask"),
               FIXED, ("model.mask_path=<INPUTS>/other.mask",)),
    ResumeCase("resume-pruning-target-changed", changed("model.pruning_target_sparsity", 0.3, 0.5), PRUNING,
               ("model.pruning_target_sparsity=0.3",)),
    ResumeCase("resume-tuner-rank-changed", changed("model.tuner_r", 8, 4), LORA, ("model.tuner_r=8",)),
    ResumeCase("resume-language-masks-changed", changed("model.language_mask_files", "['es:<INPUTS>/ca.mask', "
               "'ca:<INPUTS>/es.mask']", "['es:<INPUTS>/es.mask', 'ca:<INPUTS>/ca.mask']"), PATHWAYS,
               ("model.language_mask_files=[es:<INPUTS>/ca.mask,ca:<INPUTS>/es.mask]",), "multilingual_tiny"),
    ResumeCase("resume-weight-decay-changed", changed("optimizer.weight_decay", 0.01, 0.0), (),
               ("+optimizer.weight_decay=0.01",)),
    ResumeCase("resume-criterion-changed", changed("criterion.zero_infinity", False, True), (),
               ("criterion.zero_infinity=false",)),
    ResumeCase("resume-checkpoint-damaged-none-complete", TRAIN_ERROR + f"{SAVE_DIR}/checkpoint_last.pt: not a torch "
               "checkpoint; checkpoint.save_dir holds no complete checkpoint to resume from", (), ()),
]
CATALOGUE_IDS = tuple(case.id for case in RESUME_CASES)
TAKING_EFFECT = ("optimization.max_update=700", "optimization.lr=[0.0005]", "lr_scheduler.final_lr_scale=0.1")
"""Keys a resumed run may change (docs/reproducible-runs.md): they apply from the resumed update on."""


@pytest.fixture(scope="module")
def mask_files(inputs):
    """<INPUTS>/tiny.mask and <INPUTS>/other.mask: two masks of the TINY encoder; es.mask and
    ca.mask: two of its FFN matrices, for per-language masks."""
    from factory import TINY, random_encoder_masks
    from fairseq_subnets.core.maskfile import save_mask_file

    for name, seed in (("tiny", 0), ("other", 1)):
        save_mask_file(str(inputs / f"{name}.mask"), random_encoder_masks(0.5, seed=seed, **TINY))
    for seed, language in enumerate(("es", "ca")):
        masks = random_encoder_masks(0.5, seed=seed, **TINY)
        save_mask_file(str(inputs / f"{language}.mask"), {name: mask for name, mask in masks.items() if ".fc" in name})
    return inputs


def write_last_checkpoint(overrides, save_dir, config_name="tiny"):
    """Builds the run of `overrides` (with checkpoint.save_dir=save_dir) in this process and saves
    what it built as the trainer saves it, as save_dir/checkpoint_last.pt."""
    from fairseq_subnets.plugin.formats.checkpoints import trainer_checkpoint

    built = {}
    stage, error = built_as_fairseq_hydra_train_builds(overrides, config_name, built=built)
    assert stage is None, f"the starting run was refused at its {stage}: {error}"
    save_dir.mkdir(parents=True)
    torch.save(trainer_checkpoint(built["cfg"], built["model"].state_dict(), "SubnetsCtcCriterion"),
               save_dir / "checkpoint_last.pt")


def run_arguments(paths, save_dir, *overrides):
    """fairseq-hydra-train overrides of a run of the tiny config on the untrained TINY model."""
    return training_arguments(RunCase("", "", ("model.w2v_path=<PRETRAINED>", *overrides)), paths, save_dir)


@pytest.fixture(scope="module")
def resumed(mask_files, tmp_path_factory):
    """Every case: its starting run's checkpoint written, then the rerun built. Case id -> (stage,
    error, paths); a damaged checkpoint_last.pt is an empty file."""
    outcomes = {}
    for case in RESUME_CASES:
        save_dir = tmp_path_factory.mktemp(case.id) / "run"
        paths = {**placeholders(mask_files), SAVE_DIR: str(save_dir)}
        if case.id.startswith("resume-checkpoint-damaged"):
            save_dir.mkdir(parents=True)
            (save_dir / "checkpoint_last.pt").write_bytes(b"")
        else:
            write_last_checkpoint(run_arguments(paths, save_dir, *case.started_with), save_dir, case.config_name)
        stage, error = built_as_fairseq_hydra_train_builds(
            run_arguments(paths, save_dir, *case.started_with, *case.resumed_with), case.config_name)
        outcomes[case.id] = stage, error, paths
    return outcomes


@pytest.mark.parametrize("case", RESUME_CASES, ids=[case.id for case in RESUME_CASES])
def test_a_resumed_run_with_a_changed_setting_is_refused_before_the_model_is_built(case, resumed):
    stage, error, paths = resumed[case.id]
    assert stage == "model", f"not refused where the model is built: {stage} {error}"
    headline = str(error).splitlines()[0]
    assert headline.startswith(substituted(case.message[len(TRAIN_ERROR):], paths)), headline
    assert type(error).__name__ == "ResumeError"


@pytest.mark.parametrize("base", [(), LEARNED, PRUNING, LORA, FIXED], ids=["plain", "learned", "pruning", "lora", "fixed"])
def test_a_resumed_run_builds_unchanged_and_with_the_keys_that_take_effect(base, mask_files, tmp_path):
    """The same command builds (no key is compared that fairseq itself changes), and so does one
    that changes the run's length and learning-rate schedule."""
    save_dir = tmp_path / "run"
    paths = {**placeholders(mask_files), SAVE_DIR: str(save_dir)}
    write_last_checkpoint(run_arguments(paths, save_dir, *base), save_dir)
    for extra in ((), TAKING_EFFECT):
        stage, error = built_as_fairseq_hydra_train_builds(run_arguments(paths, save_dir, *base, *extra))
        assert stage is None, f"resumed with {extra}: refused at its {stage}: {error}"
