"""Iterative pruning inside one stock `fairseq-hydra-train` run (IMP and LTH, Yang et al. 2023),
with the shipped `imp_tiny` / `lth_tiny` configs on the skeleton's synthesized Catalan and tiny
pretrained model:

- LTH (8x1 blocks, the same sparsity per matrix, group lasso): after each event every matrix keeps
  exactly the scheduled blocks, every kept weight equals theta_0 bit for bit, Adam's state is
  empty and the learning-rate schedule starts again; the final masks come out as a mask file;
- IMP (magnitude over all matrices together): the exact global count at each event, no rewind;
  stock fairseq-generate decodes it and its export loads in stock fairseq;
- group lasso is off (0) once the target is reached (that it shrinks the block norms is in
  test_iterative_pruning_model);
- two CPU ranks pruning during multilingual training (language-agnostic pruning) hold identical
  masks after every event.

Resuming between pruning events, bit for bit, is in test_reproducible_training (mode
iterative_pruning_lth)."""
import re
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import assert_decodes_and_exports_to_stock_fairseq, two_at_a_time
from fairseq_subnets import USER_DIR

pytestmark = pytest.mark.slow

LANGUAGE = "ca"
SAVE_EVERY = 4
LTH = ["model.pruning_interval=4", "model.pruning_fraction=0.5", "model.pruning_target_sparsity=0.8",
       "model.group_lasso_strength=0.01", "optimization.max_update=14", "lr_scheduler.warmup_steps=1",
       "lr_scheduler.hold_steps=2", "lr_scheduler.decay_steps=1"]
IMP = ["model.pruning_interval=8", "model.pruning_fraction=0.5", "model.pruning_target_sparsity=0.7",
       "model.pruning_criterion=magnitude", "model.pruning_scope=global", "optimization.max_update=18"]


def train(skeleton_run, tmp_path_factory, name, config, *extra):
    from fairseq_subnets.runner import hydra_train

    _, result = skeleton_run
    save_dir = tmp_path_factory.mktemp(name) / "run"
    arguments = [f"common.user_dir={USER_DIR}", f"task.data={Path(result.corpus_dir) / LANGUAGE}",
                 f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={save_dir}",
                 f"checkpoint.save_interval_updates={SAVE_EVERY}", "checkpoint.keep_interval_updates=-1",
                 "dataset.disable_validation=true", "common.log_interval=1", *extra]
    return save_dir, hydra_train(config, arguments, save_dir.parent / "train.log", threads=1)


@pytest.fixture(scope="module")
def runs(skeleton_run, tmp_path_factory):
    """The LTH run and the IMP run, side by side."""
    lth, imp = two_at_a_time((train, skeleton_run, tmp_path_factory, "lth", "lth_tiny", *LTH),
                             (train, skeleton_run, tmp_path_factory, "imp", "imp_tiny", *IMP))
    return {"lth": lth, "imp": imp}


def checkpoint(save_dir, update):
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    return load_checkpoint(next(Path(save_dir).glob(f"checkpoint_*_{update}.pt")))


def pruning_masks(state):
    from fairseq_subnets.core.parametrize import masks_from_state_dict
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    return masks_from_state_dict(state, prefix=W2V_PREFIX)


def logged(log, key):
    """{update: value} of a key in the train_inner lines (None where it reads None)."""
    values = {}
    for line in log.splitlines():
        if "[train_inner]" in line and f"{key}=" in line:
            value = re.search(rf"{key}=([^,\s]+)", line).group(1)
            values[int(re.search(r"num_updates=(\d+)", line).group(1))] = None if value == "None" else float(value)
    return values


def test_lth_prunes_the_scheduled_blocks_and_rewinds_to_theta_0_with_empty_adam_and_a_restarted_schedule(
        runs, skeleton_run):
    from fairseq_subnets.techniques.iterative_pruning.schedule import PruningSchedule
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint
    from fairseq_subnets.plugin.components.models import W2V_PREFIX

    _, result = skeleton_run
    save_dir, log = runs["lth"]
    pretrained = load_checkpoint(result.pretrained_checkpoint)["model"]
    schedule = PruningSchedule(4, 0.5, 0.8)
    previous = None
    for event, update in enumerate((4, 8, 12), start=1):
        state = checkpoint(save_dir, update)
        masks = pruning_masks(state["model"])
        assert len(masks) == 18  # every q, k, v, out, fc1, fc2 of the 3 layers
        for name, mask in masks.items():
            blocks = mask.reshape(mask.shape[0], -1, 8)
            assert bool((blocks == blocks[..., :1]).all()), name
            assert int(blocks[..., 0].sum()) == schedule.kept_after(event, mask.numel() // 8), (name, event)
            assert previous is None or not (mask & ~previous[name]).any()
            stored = state["model"][f"{W2V_PREFIX}{name[:-len('.weight')]}.parametrizations.weight.original"]
            assert torch.equal(stored, pretrained[name]), (name, event)  # rewound: theta_0 is the start
        rewind_point = {key.split("rewind_point.", 1)[1].replace("__", "."): value
                        for key, value in state["model"].items() if "rewind_point." in key}
        assert torch.equal(state["model"]["w2v_encoder.proj.weight"], rewind_point["w2v_encoder.proj.weight"])
        assert state["last_optimizer_state"]["state"] == {}, f"Adam's state after event {event}"
        previous = masks
    assert re.findall(r"update (\d+): pruning event (\d) of 3", log) == [("4", "1"), ("8", "2"), ("12", "3")]
    assert "update 12: pruning event 3 of 3: sparsity 0.7999 (target reached" in log
    learning_rates = logged(log, "lr")
    assert learning_rates[4] == learning_rates[8] == learning_rates[12] == pytest.approx(1e-5)  # warm-up again
    assert learning_rates[5] == learning_rates[9] == pytest.approx(1e-3)
    lasso = logged(log, "regulariser_group_lasso")
    assert all(lasso[update] > 0 for update in range(1, 13))
    assert lasso[5] < lasso[4] / 1.5  # half the blocks gone at the first event
    assert lasso[13] == lasso[14] == 0  # off once the target is reached
    assert "regulariser_group_lasso" not in runs["imp"][1]


def test_the_final_masks_are_written_as_a_mask_file_the_mask_tools_read(runs, capsys):
    from fairseq_subnets.cli.main import main as cli
    from fairseq_subnets.core.maskfile import load_mask_file

    save_dir, _ = runs["lth"]
    written = load_mask_file(str(save_dir / "pruned.mask"))
    final = pruning_masks(checkpoint(save_dir, 12)["model"])
    assert written.masks.keys() == final.keys()
    assert all(torch.equal(written.masks[name], final[name]) for name in final)
    assert written.metadata["method"] == "block-l2" and written.metadata["update"] == "12"
    imp_masks = runs["imp"][0] / "pruned.mask"
    assert cli(["masks", "iou", str(save_dir / "pruned.mask"), str(imp_masks), "--json"]) == 0
    assert '"iou"' in capsys.readouterr().out


def test_imp_prunes_the_global_count_at_the_scheduled_updates_and_keeps_training_the_weights(runs, skeleton_run):
    from fairseq_subnets.techniques.iterative_pruning.schedule import PruningSchedule
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    _, result = skeleton_run
    save_dir, log = runs["imp"]
    pretrained = load_checkpoint(result.pretrained_checkpoint)["model"]
    schedule = PruningSchedule(8, 0.5, 0.7)
    assert all(bool(mask.all()) for mask in pruning_masks(checkpoint(save_dir, 4)["model"]).values())
    for event, update in ((1, 8), (2, 16)):
        state = checkpoint(save_dir, update)
        masks = pruning_masks(state["model"])
        total = sum(mask.numel() for mask in masks.values())
        assert sum(int(mask.sum()) for mask in masks.values()) == schedule.kept_after(event, total)
        assert len({round(1 - float(m.float().mean()), 2) for m in masks.values()}) > 1  # global: uneven per matrix
        assert state["last_optimizer_state"]["state"] != {}
    stored = checkpoint(save_dir, 16)["model"]
    key = "w2v_encoder.w2v_model.encoder.layers.0.fc1.parametrizations.weight.original"
    assert not torch.equal(stored[key], pretrained["encoder.layers.0.fc1.weight"])
    assert "rewound" not in log
    assert logged(log, "pruning_sparsity")[12] == pytest.approx(0.5, abs=1e-4)


def test_an_imp_checkpoint_decodes_with_fairseq_generate_and_exports_to_stock_fairseq(runs, skeleton_run, tmp_path):
    _, result = skeleton_run
    save_dir, _ = runs["imp"]
    assert_decodes_and_exports_to_stock_fairseq(save_dir / "checkpoint_last.pt", Path(result.corpus_dir) / LANGUAGE,
                                                tmp_path)


def test_two_cpu_ranks_pruning_a_multilingual_model_hold_identical_masks_after_every_event(skeleton_run, tmp_path):
    """Language-agnostic pruning (LAP): the schedule on the multilingual task; after each event
    every rank compares its mask digest with the others'."""
    from fairseq_subnets.cli.main import main as cli

    _, result = skeleton_run
    save_dir = tmp_path / "lap"
    arguments = ["--config-dir", str(Path(USER_DIR) / "config" / "finetune"), "--config-name", "multilingual_tiny",
                 f"common.user_dir={USER_DIR}", f"task.data={result.corpus_dir}", "task.languages=[es,ca]",
                 f"model.w2v_path={result.pretrained_checkpoint}", f"checkpoint.save_dir={save_dir}",
                 "optimization.max_update=6", "+model.pruning_interval=2", "+model.pruning_fraction=0.5",
                 "+model.pruning_target_sparsity=0.7", "+model.pruning_criterion=magnitude", "common.log_interval=1"]
    assert cli(["launch", "--nprocs", "2", "--log-dir", str(tmp_path), "--", *arguments]) == 0
    log = (tmp_path / "train_rank0.log").read_text()
    events = [line for line in log.splitlines() if re.search(r"pruning event \d of 2", line)]
    assert len(events) == 2 and "done training" in log
    after_events = log.split(events[0])[1]
    assert len(re.findall(r"encoder masks identical on all 2 ranks \(sha256 [0-9a-f]{16}\)", after_events)) >= 2
