"""The extension interface: a technique the package does not know (tests/toy_technique.py, named
in FAIRSEQ_SUBNETS_TECHNIQUES) joins the registry, its conflict and checks run in the one config
check, and stock fairseq-hydra-train trains it: its config key, its transform kind and its hook,
with no edit to the host, the task or any other technique."""
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

TOY_FILE = Path(__file__).with_name("toy_technique.py")


@pytest.fixture
def toy_registered(monkeypatch):
    """The registry with the toy technique's file named in the environment."""
    from fairseq_subnets.techniques import EXTRA_TECHNIQUES_VARIABLE

    monkeypatch.setenv(EXTRA_TECHNIQUES_VARIABLE, str(TOY_FILE))


def test_a_technique_named_by_file_joins_the_registry_last(toy_registered):
    from fairseq_subnets.techniques import BUILT_IN, registered_techniques

    techniques = registered_techniques()
    assert [technique.name for technique in techniques] == [*BUILT_IN, "toy"]
    assert registered_techniques()[-1] is techniques[-1]  # the file is imported once per process


def test_importing_a_technique_registers_every_transform_kind_its_folder_defines():
    """A state dict rebuilds and bakes only with its kinds registered, and the core cannot import
    the techniques: so a technique's package, imported alone in a fresh interpreter (no fairseq),
    must register every kind its folder's modules define. pkgutil then imports every module of the
    folder and must find no kind left to register."""
    import json
    import subprocess
    import sys

    script = (
        "import importlib, json, pkgutil, sys\n"
        "from fairseq_subnets.core.transforms import TRANSFORM_KINDS\n"
        "from fairseq_subnets.techniques import BUILT_IN\n"
        "registered, late = {}, {}\n"
        "for name in BUILT_IN:\n"
        "    before = set(TRANSFORM_KINDS)\n"
        "    package = importlib.import_module('fairseq_subnets.techniques.' + name)\n"
        "    on_import = set(TRANSFORM_KINDS)\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "    registered[name] = sorted(on_import - before)\n"
        "    late[name] = sorted(set(TRANSFORM_KINDS) - on_import)\n"
        "print(json.dumps([registered, late, 'fairseq' in sys.modules]))\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    registered, late, imported_fairseq = json.loads(completed.stdout)
    assert late == {name: [] for name in registered}
    assert registered["learned_masks"] == ["score_mask"] and registered["pathways"] == ["language_masks"]
    assert not imported_fairseq


def test_a_listed_module_without_a_technique_and_a_missing_file_are_refused_by_name(monkeypatch, tmp_path):
    from fairseq_subnets.techniques import EXTRA_TECHNIQUES_VARIABLE, registered_techniques

    monkeypatch.setenv(EXTRA_TECHNIQUES_VARIABLE, "json")
    with pytest.raises(ImportError, match="^json .* has no TECHNIQUE"):
        registered_techniques()
    monkeypatch.setenv(EXTRA_TECHNIQUES_VARIABLE, str(tmp_path / "absent.py"))
    with pytest.raises(ImportError, match="absent.py, which is not a Python file"):
        registered_techniques()


def model_config(**values):
    """Every registered technique's keys at their defaults, with `values` set, as fairseq hands
    the host its config (freeze keys included: the checks read them)."""
    from dataclasses import fields

    from fairseq_subnets.techniques import registered_techniques

    keys = {field.name: field.default for technique in registered_techniques() for field in fields(technique.config)}
    return OmegaConf.create({**keys, "freeze_encoder_epochs": 0, "freeze_finetune_updates": 0, **values})


def test_the_declared_conflict_and_the_technique_checks_run_in_the_one_config_check(toy_registered):
    from fairseq_subnets.errors import PluginInputError
    from fairseq_subnets.techniques import registered_techniques
    from fairseq_subnets.techniques.extension import check_model_config

    techniques = registered_techniques()
    enabled = check_model_config(techniques, model_config(toy_scale=0.5))
    assert [(technique.name, key) for technique, key in enabled] == [("toy", "toy_scale")]
    with pytest.raises(PluginInputError, match=r"^model.toy_scale with model.score_sparsity: the toy technique trains "
                       "no scores$"):
        check_model_config(techniques, model_config(toy_scale=0.5, score_sparsity=0.1))
    with pytest.raises(PluginInputError, match=r"^model.toy_scale=-1.0: must be > 0$"):
        check_model_config(techniques, model_config(toy_scale=-1.0))


def test_the_collected_key_lists_are_the_union_of_the_declarations():
    from fairseq_subnets.plugin.components.models import (
        RECORDED_MODEL_KEYS, TRAINING_ONLY_MODEL_KEYS, TRAINING_STATE_PREFIXES,
    )

    assert set(TRAINING_ONLY_MODEL_KEYS) == {"init_from", "init_from_language", "mask_path", "language_mask_files",
                                             "pruning_interval", "pruning_target_sparsity", "pruning_rewind_update",
                                             "group_lasso_strength"}
    assert set(RECORDED_MODEL_KEYS) == {"transform_plan", "w2v_args", "languages", "language_output_layers",
                                        "language_output_sizes"}
    assert TRAINING_STATE_PREFIXES == ("iterative_pruning.",)


@pytest.mark.slow
def test_stock_fairseq_hydra_train_trains_the_toy_technique_and_refuses_its_key_without_it(skeleton_run, tmp_path):
    from fairseq_subnets import USER_DIR
    from fairseq_subnets.plugin.formats.checkpoints import load_fairseq_checkpoint
    from fairseq_subnets.runner import CONFIG_DIR, RunError, fairseq_command, run_logged
    from fairseq_subnets.techniques import EXTRA_TECHNIQUES_VARIABLE

    _, result = skeleton_run
    command = [fairseq_command("fairseq-hydra-train"), "--config-dir", CONFIG_DIR / "finetune", "--config-name", "tiny",
               f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / 'es'}",
               f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={tmp_path / 'run'}",
               "optimization.max_update=6", "dataset.disable_validation=true", "+model.toy_scale=0.5"]
    environment = {**os.environ, EXTRA_TECHNIQUES_VARIABLE: str(TOY_FILE)}
    run_logged(command, tmp_path / "toy.log", env=environment)
    checkpoint = load_fairseq_checkpoint(str(tmp_path / "run" / "checkpoint_last.pt"))
    assert checkpoint["cfg"]["model"]["toy_scale"] == 0.5
    assert "subnets_toy_scale" in checkpoint["cfg"]["model"]["transform_plan"]
    state = checkpoint["model"]
    assert int(state["toy_optimizer_steps"]) == 6
    scales = [value for key, value in state.items() if key.endswith(".subnets_toy_scale.toy.scale")]
    fc1_weights = [key for key in state if key.endswith(".fc1.parametrizations.weight.original")]
    assert scales and len(scales) == len(fc1_weights)
    assert all(not torch.equal(scale, torch.tensor(0.5)) for scale in scales)  # they trained

    without = {name: value for name, value in environment.items() if name != EXTRA_TECHNIQUES_VARIABLE}
    with pytest.raises(RunError, match="toy_scale"):
        run_logged(command, tmp_path / "unregistered.log", env=without)
