"""The shipped Hydra configs: each technique ships its config groups in its own folder
(techniques/<technique>/configs/<group>/, a tuner's options in techniques/tuners/<method>/configs/),
and the entry configs in config/finetune reach them through `hydra.searchpath`, so the stock
`fairseq-hydra-train --config-dir .../config/finetune --config-name NAME` keeps working. Every entry
config composes as fairseq composes it, each group option comes from its technique's folder, the
cache key's file list (HydraConfig.files) is exactly those files, and the built package ships every
yaml."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fairseq_subnets import USER_DIR
from fairseq_subnets.engine.hydra_configs import HydraConfig, search_path_folders
from fairseq_subnets.runner import CONFIG_DIR

PACKAGE = Path(USER_DIR)
TECHNIQUES = PACKAGE / "techniques"
REPOSITORY = PACKAGE.parent
FINETUNE = CONFIG_DIR / "finetune"
ENTRY_CONFIGS = sorted(path.stem for path in FINETUNE.glob("*.yaml"))


def owner_folder(group: str, option: str) -> Path:
    """The technique folder that ships option `option` of config group `group`."""
    folders = {"tuner": TECHNIQUES / "tuners" / option, "tuner_schedule": TECHNIQUES / "tuners",
               "learned_masks": TECHNIQUES / "learned_masks", "iterative_pruning": TECHNIQUES / "iterative_pruning",
               "rewinding": TECHNIQUES / "iterative_pruning", "multilingual": TECHNIQUES / "language_heads"}
    return folders[group] / "configs"


def compose_with_choices(config_name):
    """The config as fairseq-hydra-train composes it (its schema stored under the config's name,
    removed afterwards: one fairseq process composes one config), with Hydra's own record of the
    group options it chose and the folders it searched."""
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    hydra_init(config_name)
    try:
        with initialize_config_dir(config_dir=str(FINETUNE), version_base="1.1"):
            cfg = compose(config_name=config_name, return_hydra_config=True)
    finally:
        ConfigStore.instance().repo.pop(f"{config_name}.yaml", None)
    choices = {key.split("@")[0]: option for key, option in cfg.hydra.runtime.choices.items()
               if not key.startswith("hydra/")}
    return cfg, choices


def test_config_finetune_holds_only_entry_configs():
    """No config group is left beside the entry configs: each lives in its technique's folder."""
    assert [path.name for path in FINETUNE.iterdir() if path.is_dir()] == []
    assert {"tiny", "xlsr_300m", "lora_tiny", "learned_masks_xlsr_300m", "pathways_tiny"} <= set(ENTRY_CONFIGS)


@pytest.mark.parametrize("config_name", ENTRY_CONFIGS)
def test_every_entry_config_composes_with_its_groups_from_the_technique_folders(config_name):
    cfg, choices = compose_with_choices(config_name)
    assert cfg.model._name == "subnets_wav2vec_ctc" and cfg.task._name.startswith("subnets_")
    entry = FINETUNE / f"{config_name}.yaml"
    content = yaml.safe_load(entry.read_text())
    folders = search_path_folders(entry, content)
    group_files = []
    for group, option in choices.items():
        holders = [folder for folder in [FINETUNE, *folders] if (folder / group / f"{option}.yaml").is_file()]
        assert holders == [owner_folder(group, option)], (group, option)
        group_files.append(holders[0] / group / f"{option}.yaml")
    bases = [FINETUNE / f"{name}.yaml" for name in content.get("defaults", []) if isinstance(name, str) and name != "_self_"]
    assert sorted(HydraConfig(config_name, FINETUNE).files()) == sorted([entry, *bases, *group_files])


@pytest.mark.parametrize("technique", ["tuners", "learned_masks", "iterative_pruning", "language_heads"])
def test_each_techniques_shipped_configs_are_in_its_folder_and_used(technique):
    """Every group file a technique ships is chosen by at least one entry config (none is stale)."""
    shipped = sorted(TECHNIQUES.joinpath(technique).glob("**/configs/*/*.yaml"))
    assert shipped
    used = {path for name in ENTRY_CONFIGS for path in HydraConfig(name, FINETUNE).files()}
    assert [path for path in shipped if path not in used] == []


def test_the_built_package_ships_every_yaml(tmp_path):
    """What setup.py builds (the content of a wheel) holds every yaml of the package: the entry
    configs, the pretraining config and every technique's groups."""
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path / "build")],
                   cwd=REPOSITORY, check=True, capture_output=True)
    built = {path.relative_to(tmp_path / "build" / "lib") for path in (tmp_path / "build" / "lib").rglob("*.yaml")}
    source = {path.relative_to(REPOSITORY) for path in PACKAGE.rglob("*.yaml")}
    assert len(source) > 30 and built == source


@pytest.mark.slow
def test_stock_fairseq_hydra_train_finds_a_techniques_groups_through_the_search_path(tmp_path):
    """The real command: `--cfg job` prints the config fairseq-hydra-train composed (and trains
    nothing); lth_tiny takes two groups from iterative pruning's folder."""
    from fairseq_subnets.runner import fairseq_command, run_logged

    run_logged([fairseq_command("fairseq-hydra-train"), "--config-dir", FINETUNE, "--config-name", "lth_tiny",
                f"common.user_dir={USER_DIR}", f"task.data={tmp_path}", f"model.w2v_path={tmp_path / 'w.pt'}",
                f"checkpoint.save_dir={tmp_path / 'run'}", "--cfg", "job"], tmp_path / "cfg.log")
    printed = (tmp_path / "cfg.log").read_text()
    assert "pruning_interval: 80" in printed and "_name: subnets_tri_stage" in printed
    assert "is not available" not in printed
