"""`fairseq-subnets bench gpu`, the prepared GPU check: its CPU dry mode end to end (every mode
trained through stock fairseq-hydra-train, decoded with stock fairseq-generate, exported, pruned
weights checked), the GPU run's overrides composed as fairseq composes them, and the reading of
fairseq's training log. The GPU run itself needs a GPU (docs/benchmarks.md)."""
import json
import textwrap

import pytest

from fairseq_subnets.benchmarks.gpu_check import (
    LANGUAGES, MODES, REFERENCE, GpuCheckSettings, _pruning_overrides, training_facts, training_overrides,
)
from fairseq_subnets.cli.main import main

PRUNABLE_WEIGHTS = 4 * 256 * 256 + 2 * 256 * 512
"""The dry mode's one encoder layer: q, k, v, out (256 x 256), fc1 and fc2 (256 x 512)."""


@pytest.mark.slow
def test_the_dry_mode_trains_decodes_exports_and_checks_every_mode(tmp_path, capsys, monkeypatch):
    import os

    from fairseq_subnets import runner

    threads_asked = []
    thread_env = runner.thread_env
    monkeypatch.setattr(runner, "thread_env", lambda threads: threads_asked.append(threads) or thread_env(threads))
    out = tmp_path / "check"
    assert main(["bench", "gpu", "--dry-run", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(threads_asked) == 2 * len(MODES)  # a training and a decode per mode, two at a time on the cores
    assert set(threads_asked) == {max(1, (os.cpu_count() or 1) // 2)}
    assert json.loads((out / "gpu_check.json").read_text()) == result
    assert result["dry_run"] and result["device"] is None and result["all_ok"]

    assert list(result["modes"]) == list(MODES) and next(iter(MODES)) == REFERENCE
    for mode, facts in result["modes"].items():
        assert facts["status"] == "ok", (mode, facts.get("error"))
        assert "common.fp16=false" in facts["overrides"] and "optimization.max_update=2" in facts["overrides"]
        training = facts["training"]
        assert (training["updates"], training["timed_updates"]) == (2, 1), mode
        assert training["updates_per_second"] > 0 and facts["speed_ratio"] > 0, mode
        assert training["peak_gpu_memory_gib"] is None, mode  # fairseq logs gb_free on CUDA only
        assert training["trained_values"] > 0, mode
        assert facts["decode"]["utterances"] == 2, mode
        assert facts["export"]["file_gb"] > 0, mode
        assert ("pruned_weights" in facts) == MODES[mode].masked, mode
        assert not list((out / "runs" / mode).glob("*.pt")), mode  # checkpoints and export removed
    assert result["modes"][REFERENCE]["speed_ratio"] == 1.0

    zeros = {mode: facts["pruned_weights"] for mode, facts in result["modes"].items() if MODES[mode].masked}
    assert set(zeros) == {"fixed_masks", "learned_masks", "imp", "lth", "pathways"}
    for mode, check in zeros.items():
        assert check["exactly_zero"] and check["pruned_weights"] > 0, (mode, check)
        assert check["nonzero_pruned_in_checkpoint"] == check["nonzero_pruned_in_export"] == 0, mode
        assert check["nonfinite_effective_weights"] == 0 and check["effective_dtype"] == "float32", mode
    assert zeros["fixed_masks"]["pruned_weights"] == round(0.9 * PRUNABLE_WEIGHTS)
    assert zeros["pathways"]["languages"] == list(LANGUAGES) and zeros["pathways"]["masked_matrices"] == 12
    assert zeros["pathways"]["pruned_weights"] == len(LANGUAGES) * PRUNABLE_WEIGHTS // 2
    for mode in ("imp", "lth"):  # two events of 20% within the 2 updates: 36%, rounded per 8x1 block
        assert abs(zeros[mode]["pruned_weights"] - 0.36 * PRUNABLE_WEIGHTS) < 6 * 8 * 2, mode


def compose_as_fairseq_does(config_name, overrides):
    """A shipped config with overrides, composed by Hydra and completed with every component's
    defaults (fairseq's add_defaults, which refuses keys a component does not have), as
    fairseq-hydra-train builds its config before training. fairseq validates the config it is
    given against its schema stored under the config's name; that entry is removed afterwards, as
    one fairseq process composes one config."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    import fairseq_subnets.plugin  # noqa: F401 (registers the subnets_ components)
    from fairseq_subnets.runner import CONFIG_DIR

    hydra_init(config_name)  # fairseq's schema, stored under the config's name
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR / "finetune"), version_base="1.1"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    finally:  # a later config that includes this one (learned_masks_xlsr_300m: xlsr_300m) must not meet it
        ConfigStore.instance().repo.pop(f"{config_name}.yaml", None)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    add_defaults(cfg)
    return cfg


@pytest.mark.parametrize("mode", list(MODES))
def test_every_modes_overrides_compose_and_fit_the_run(mode, tmp_path):
    """The GPU run is never run here (the dry mode's overrides are, by the test above): its exact
    overrides must compose, take effect (fp16, one process, the update count) and fit every
    schedule into the run before it is lent a GPU."""
    from fairseq_subnets.techniques.iterative_pruning.schedule import PruningSchedule
    from fairseq_subnets.techniques.tuners import tuner_config
    from fairseq_subnets.techniques import registered_techniques
    from fairseq_subnets.techniques.extension import check_model_config

    settings = GpuCheckSettings.full(tmp_path)
    cfg = compose_as_fairseq_does(MODES[mode].config, training_overrides(settings, mode))
    assert cfg.common.fp16 and not cfg.common.cpu and settings.updates == 20
    assert cfg.distributed_training.distributed_world_size == 1 and list(cfg.optimization.update_freq) == [1]
    assert cfg.optimization.max_update == settings.updates and cfg.model.freeze_finetune_updates == 0
    assert cfg.checkpoint.no_save_optimizer_state and cfg.common.log_interval == 1
    expected_model = "wav2vec_ctc" if mode == REFERENCE else "subnets_wav2vec_ctc"
    assert cfg.model._name == expected_model
    if mode == REFERENCE:
        assert (cfg.task._name, cfg.criterion._name) == ("audio_finetuning", "ctc")
        return
    check_model_config(registered_techniques(), cfg.model)  # every technique's own checks, as the model's build
    if cfg.model.get("pruning_interval") is not None:
        schedule = PruningSchedule(cfg.model.pruning_interval, cfg.model.pruning_fraction,
                                   cfg.model.pruning_target_sparsity)
        assert (schedule.interval, schedule.events, schedule.target_sparsity) == (3, 6, 0.7)
        assert schedule.final_update <= settings.updates
    if mode == "lth":
        scheduler = cfg.lr_scheduler
        assert scheduler._name == "subnets_tri_stage" and cfg.common.memory_efficient_fp16
        assert scheduler.warmup_steps + scheduler.hold_steps + scheduler.decay_steps == cfg.model.pruning_interval
        assert min(scheduler.warmup_steps, scheduler.hold_steps, scheduler.decay_steps) >= 1
    if mode == "adalora":
        options = {key[len("tuner_"):]: value for key, value in cfg.model.items()
                   if key.startswith("tuner_") and value is not None}
        adalora = tuner_config("adalora", **options)
        assert adalora.total_updates == settings.updates
        assert adalora.warmup_updates + adalora.final_updates < adalora.total_updates
    if MODES[mode].multilingual:
        assert list(cfg.task.languages) == list(LANGUAGES) and cfg.task.data.endswith("/data")


def test_the_pruning_schedule_squeezed_into_the_run_keeps_the_shipped_one_where_it_fits(tmp_path):
    assert _pruning_overrides(GpuCheckSettings.full(tmp_path)) == ["model.pruning_interval=3"]
    assert _pruning_overrides(GpuCheckSettings.dry(tmp_path)) == ["model.pruning_interval=1",
                                                                  "model.pruning_target_sparsity=0.36"]


def test_the_dry_mode_shares_the_cores_between_its_side_by_side_commands_and_the_gpu_run_keeps_the_environment(
        tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    dry = GpuCheckSettings.dry(tmp_path)
    assert (dry.cpu_threads(dry.trainings_at_a_time), dry.cpu_threads(dry.parallel), dry.cpu_threads(4)) == (1, 1, 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert (dry.cpu_threads(dry.trainings_at_a_time), dry.cpu_threads(3)) == (8, 5)
    full = GpuCheckSettings.full(tmp_path)
    assert full.cpu_threads(full.trainings_at_a_time) is None and full.cpu_threads(full.parallel) is None


LOG = textwrap.dedent("""\
    [2026-12-07 06:20:40,070][fairseq_cli.train][INFO] - num. shared model params: 315,438,720 (num. trained: 315,438,720)
    [2026-12-07 06:20:40,070][train_inner][INFO] - {"epoch": 1, "update": 0.038, "loss": "85.137", "ups": "0", "num_updates": "1", "loss_scale": "128", "gb_free": "61.2", "wall": "14"}
    [2026-12-07 06:20:40,500][fairseq.trainer][INFO] - NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: 64.0
    [2026-12-07 06:20:41,000][train_inner][INFO] - {"epoch": 1, "update": 0.077, "loss": "84.1", "ups": "1.25", "num_updates": "2", "loss_scale": "64", "gb_free": "58.9", "wall": "15"}
    [2026-12-07 06:20:41,300][train_inner][INFO] - {"epoch": 1, "update": 0.115, "loss": "83.0", "ups": "3.33", "num_updates": "3", "loss_scale": "64", "gb_free": "59.0", "wall": "15"}
    [2026-12-07 06:20:41,550][train_inner][INFO] - {"epoch": 1, "update": 0.154, "loss": "82.0", "ups": "4", "num_updates": "4", "loss_scale": "64", "gb_free": "59.1", "wall": "15"}
    [2026-12-07 06:20:41,800][train_inner][INFO] - {"epoch": 1, "update": 0.192, "loss": "81.0", "ups": "4", "num_updates": "5", "loss_scale": "64", "gb_free": "59.1", "wall": "16"}
    [2026-12-07 06:20:42,000][train][INFO] - {"epoch": 1, "train_loss": "83.0", "train_ups": "2.9", "train_num_updates": "5"}
    """)
"""Lines as fairseq logs them with common.log_format=json under Hydra (values as strings; `gb_free`
on CUDA only); an fp16 overflow step before update 2."""


def test_speed_and_memory_come_from_the_train_inner_lines_after_the_warm_up():
    facts = training_facts(LOG, warmup_updates=2, total_memory_gib=79.1)
    assert (facts["updates"], facts["timed_updates"], facts["overflow_steps"]) == (5, 3, 1)
    assert facts["seconds_per_update"] == 0.25 and facts["updates_per_second"] == 4.0  # median of 1 / 3.33, 0.25, 0.25
    assert facts["mean_seconds_per_update"] == 0.2668  # (1 / 3.33 + 0.25 + 0.25) / 3
    assert facts["peak_gpu_memory_gib"] == 20.2  # 79.1 less the smallest gb_free, 58.9
    assert facts["final_loss_scale"] == 64.0 and facts["trained_values"] == 315_438_720


def test_without_gb_free_lines_the_peak_is_unknown_not_zero():
    cpu_log = "\n".join(line.replace(', "gb_free": "61.2"', "") for line in LOG.splitlines()[:2])
    facts = training_facts(cpu_log, warmup_updates=1, total_memory_gib=79.1)
    assert facts["peak_gpu_memory_gib"] is None and facts["updates_per_second"] is None
    assert facts["timed_updates"] == 0 and facts["updates"] == 1
