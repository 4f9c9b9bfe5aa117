"""Caching of a Storey grid by content digests, with a stand-in for fairseq as the grid's runner
(training writes a checkpoint of random weights, decoding returns fixed rates) but the real engine,
the real cells and real pruning into real mask files: change `prune.method` and only the masks and
the cells built on them run again; change an upstream setting and its model and everything built
on it does."""
import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fairseq_subnets.core.maskfile import load_mask_file
from fairseq_subnets.core.targets import KINDS, weight_name
from fairseq_subnets.engine.executors import LocalExecutor
from fairseq_subnets.engine.grid_file import MANIFEST_FILES
from fairseq_subnets.experiments.storey2025 import GridRun, load_grid
from fairseq_subnets.plugin.tools import prune as plugin_prune

LAYERS = 2
WIDTH = 8


def fake_checkpoint(path, prefix, seed):
    generator = torch.Generator().manual_seed(seed)
    state = {prefix + weight_name(layer, kind): torch.randn(WIDTH, WIDTH, generator=generator)
             for layer in range(LAYERS) for kind in KINDS}
    torch.save({"model": state}, path)


class FakeFairseq:
    """The grid's runner: stands in for fairseq-hydra-train and fairseq-generate, logs what ran."""

    def __init__(self):
        self.trained, self.decoded, self.pruned = [], [], []

    def hydra_train(self, config, overrides, log_path, **options):
        save_dir = next(item.split("=", 1)[1] for item in overrides if item.startswith("checkpoint.save_dir="))
        self.trained.append(log_path.parent.name)
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            fake_checkpoint(f"{save_dir}/{name}", "w2v_encoder.w2v_model.", seed=len(self.trained))
        log_path.write_text("done training\n")
        return "done training"

    def generate(self, data_dir, checkpoint, subset, results_dir, threads=None, task_args=()):
        self.decoded.append(results_dir.parent.name)
        return SimpleNamespace(cer=10.0, wer=20.0, hypotheses=3)

    @staticmethod
    def epoch_updates(data_dir, max_tokens, world_size):
        return 2


@pytest.fixture
def fake(tmp_path, monkeypatch):
    fake = FakeFairseq()
    real_prune = plugin_prune.prune_checkpoint

    def prune_checkpoint(checkpoint, out, *arguments, **options):
        fake.pruned.append(out.rsplit("/", 1)[-1])
        return real_prune(checkpoint, out, *arguments, **options)

    monkeypatch.setattr(plugin_prune, "prune_checkpoint", prune_checkpoint)
    for language in ("es", "ca"):
        for name in MANIFEST_FILES:
            path = tmp_path / "corpus" / language / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{language} {name}\n")
    fake_checkpoint(tmp_path / "pretrained.pt", "", seed=0)
    return fake


def write_grid(tmp_path, method="global-l1", upstream_lr=0.0005):
    grid = tmp_path / "grid.yaml"
    grid.write_text("\n".join([
        "method: storey2025", "name: cache", f"data: {tmp_path / 'corpus'}", f"pretrained: {tmp_path / 'pretrained.pt'}",
        f"upstream: {{languages: [es], updates: 5, lr: {upstream_lr}}}",
        f"prune: {{method: {method}, sparsities: [0.0, 0.5]}}",
        "downstream: {languages: [es, ca], sources: [own, base]}",
    ]) + "\n")
    return load_grid(grid)


def run_grid(tmp_path, fake, spec):
    for log in (fake.trained, fake.decoded, fake.pruned):
        log.clear()
    run = GridRun(spec, tmp_path / "out", LocalExecutor(1), say=lambda message: None, runner=fake)
    run.run()
    return run


UPSTREAM = "es-seed1"
UNMASKED = ["es-ca-s0.00-own-seed1", "es-es-s0.00-own-seed1"]
MASKED = ["es-ca-s0.50-base-seed1", "es-ca-s0.50-own-seed1", "es-es-s0.50-base-seed1", "es-es-s0.50-own-seed1"]


def test_changing_prune_method_rebuilds_the_masks_and_their_cells_only(tmp_path, fake):
    first = run_grid(tmp_path, fake, write_grid(tmp_path))
    assert sorted(fake.trained) == sorted([UPSTREAM] + UNMASKED + MASKED)
    assert sorted(fake.pruned) == ["base-s0.50.mask", "es-seed1-s0.50.mask"]
    assert len(first.rows) == 7 and all(row["cer"] == 10.0 for row in first.rows)

    run_grid(tmp_path, fake, write_grid(tmp_path))
    assert fake.trained == fake.decoded == fake.pruned == []

    changed = run_grid(tmp_path, fake, write_grid(tmp_path, method="layer-l1"))
    assert sorted(fake.pruned) == ["base-s0.50.mask", "es-seed1-s0.50.mask"]
    assert sorted(fake.trained) == sorted(fake.decoded) == MASKED
    rows = {row["cell"]: row for row in changed.rows}
    for name in MASKED:
        assert load_mask_file(rows[name]["mask_path"]).metadata["method"] == "layer-l1"
    iou = changed.results["iou"]["iou"]
    assert [(row["a"], row["b"]) for row in iou] == [("base", "es")]
    assert (tmp_path / "out" / "iou.csv").read_text().splitlines()[1].startswith("0.5,base,es,")


def test_retraining_an_upstream_model_rebuilds_its_masks_and_cells_but_not_the_base_mask(tmp_path, fake):
    run_grid(tmp_path, fake, write_grid(tmp_path))
    run_grid(tmp_path, fake, write_grid(tmp_path, upstream_lr=0.001))
    assert sorted(fake.trained) == sorted([UPSTREAM] + UNMASKED + MASKED)
    assert fake.pruned == ["es-seed1-s0.50.mask"]


def test_a_changed_manifest_reruns_only_the_cells_reading_it(tmp_path, fake):
    run_grid(tmp_path, fake, write_grid(tmp_path))
    (tmp_path / "corpus" / "ca" / "test.ltr").write_text("c a\n")
    run_grid(tmp_path, fake, write_grid(tmp_path))
    assert sorted(fake.trained) == ["es-ca-s0.00-own-seed1", "es-ca-s0.50-base-seed1", "es-ca-s0.50-own-seed1"]
    assert fake.pruned == []


def listed_paths(out):
    """Every output path results.csv and results.json point at (checkpoints, mask files)."""
    import json

    rows = read_rows(out) + json.loads((out / "results.json").read_text())["cells"]
    return {row[column] for row in rows for column in ("checkpoint", "mask_path") if row.get(column)}


def test_an_interrupted_rerun_never_lists_deleted_outputs_and_keeps_every_finished_cell(tmp_path, fake, monkeypatch):
    """The upstream learning rate changed, then the rerun interrupted (KeyboardInterrupt, as Ctrl-C) as its
    third training starts: whenever a changed cell's folder is deleted, the results files on disk already leave
    it out; afterwards every listed output exists and every cell finished with its current key
    (here the upstream model and one downstream cell, retrained before the interruption) is listed
    with its result."""
    import shutil

    from fairseq_subnets.engine import scheduler

    out = tmp_path / "out"
    run_grid(tmp_path, fake, write_grid(tmp_path))
    spec = write_grid(tmp_path, upstream_lr=0.001)
    deleted = []
    real_rmtree = shutil.rmtree

    def checked_rmtree(path, *args, **kwargs):
        assert not any(listed.startswith(str(path)) for listed in listed_paths(out)), f"{path} still listed"
        deleted.append(str(path))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(scheduler.shutil, "rmtree", checked_rmtree)

    def interrupt_at_third_training(message):
        if message.endswith(": started") and len(fake.trained) == 2:
            raise KeyboardInterrupt  # in the main thread, as Ctrl-C arrives

    for log in (fake.trained, fake.decoded, fake.pruned):
        log.clear()
    run = GridRun(spec, out, LocalExecutor(1), say=interrupt_at_third_training, runner=fake)
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert len(deleted) >= 3 and len(fake.trained) == 2  # the upstream model, its mask, downstream cells
    assert all(Path(path).exists() for path in listed_paths(out))
    finished = {name for name, result in scheduler.cached_results(run.cells).items()}
    listed = {row["cell"] for row in read_rows(out) if row["cer"]}
    reported = {cell.name for cell in run.cells if cell.row is not None}
    assert listed == finished & reported
    assert f"upstream-{UPSTREAM}" in listed and len(listed) == 2


def read_rows(out):
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))
