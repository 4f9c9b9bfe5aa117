"""Executors past one thread: a real Storey cell run through submitit's local executor (its own
process) with the caching decided here, what a cell asks of Slurm, and Slurm options from a grid
file or the command line checked before anything runs."""
import pytest

from fairseq_subnets.cli.main import main as cli
from fairseq_subnets.engine.cells import Cell
from fairseq_subnets.engine.executors import (
    LocalExecutor, SlurmOptions, SubmititExecutor, make_executor, slurm_options,
)
from fairseq_subnets.engine.scheduler import run_cells
from fairseq_subnets.experiments.storey2025.cells import IOU_CELL, GridRun

from test_grid_cache import fake  # noqa: F401  (a fixture)
from test_grid_cache import write_grid as write_cache_grid
from test_grid_config import corpus_dir, pretrained, write_grid  # noqa: F401  (fixtures)


def test_a_cell_runs_as_a_submitit_job_while_finished_cells_stay_cached(tmp_path, fake):
    """The grid's cells run here first (fairseq stubbed), except the IOU cell; then the whole grid
    goes through submitit's local executor with the stock runner (a job could not import the
    test's stand-in): only the IOU cell becomes a job, in its own process, and runs no fairseq."""
    pytest.importorskip("submitit")
    from fairseq_subnets.core import stats
    from fairseq_subnets.core.maskfile import load_mask_file

    out = tmp_path / "out"
    cells = GridRun(write_cache_grid(tmp_path), out).cells
    local = run_cells([cell for cell in cells if cell.name != IOU_CELL], LocalExecutor(1), say=lambda message: None,
                      runner=fake)
    trained = list(fake.trained)
    results = run_cells(cells, make_executor("submitit-local", 2, out), say=lambda message: None)  # stock runner
    assert fake.trained == trained and {name: results[name] for name in local} == local
    assert sorted(path.name for path in (out / "submitit").iterdir()) == [IOU_CELL]
    assert list((out / "submitit" / IOU_CELL).glob("*_log.out"))
    masks = [load_mask_file(results[f"mask-{label}-s0.50"]["mask_path"]).masks for label in ("base", "es-seed1")]
    assert results[IOU_CELL]["iou"] == [{"sparsity": 0.5, "a": "base", "b": "es", "iou": round(stats.iou(*masks), 6)}]


def test_a_slurm_cell_asks_for_its_ranks_gpus_and_cpus(tmp_path):
    pytest.importorskip("submitit")
    options = slurm_options({"partition": "gpu", "time_min": 90, "gpus_per_rank": 1, "cpus_per_rank": 4,
                             "mem_gb_per_rank": 16}, "slurm")
    executor = SubmititExecutor(tmp_path, "slurm", jobs=8, slurm=options)
    cell = Cell("en-ca-s0.90-own-seed1", tmp_path / "cell", None, ranks=2)
    assert executor.parameters(cell) == {
        "name": "en-ca-s0.90-own-seed1", "timeout_min": 90, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 2,
        "cpus_per_task": 8, "slurm_partition": "gpu", "mem_gb": 32}
    context = executor.context(cell, {}, runner=None)
    assert (context.gpus, context.threads) == (2, 8)


def test_command_line_slurm_options_override_the_grid_files():
    base = slurm_options({"partition": "cpu", "time_min": 30}, "grid.yaml: slurm")
    assert slurm_options({"time_min": 60}, "--slurm", base=base) == SlurmOptions(partition="cpu", time_min=60)


@pytest.mark.parametrize("section, message", [
    ("slurm: {partitions: gpu}", "slurm: unknown key partitions"),
    ("slurm: {gpus_per_rank: two}", "slurm: gpus_per_rank must be a non-negative integer, got 'two'"),
    ("slurm: {time_min: -5}", "slurm: time_min must be a non-negative integer"),
    ("slurm: [gpu]", "slurm must be a mapping"),
])
def test_bad_slurm_section_is_named_before_anything_runs(tmp_path, corpus_dir, capsys, section, message):  # noqa: F811
    grid = write_grid(tmp_path, corpus_dir, extra=section)
    assert cli(["grid", str(grid), "--out", str(tmp_path / "out"), "--executor", "slurm"]) == 2
    error = capsys.readouterr().err
    assert str(grid) in error and message in error
    assert not (tmp_path / "out").exists()


def test_bad_slurm_flag_is_named(tmp_path, corpus_dir, capsys):  # noqa: F811
    grid = write_grid(tmp_path, corpus_dir)
    assert cli(["grid", str(grid), "--dry-run", "--slurm", "cpus_per_rank=many"]) == 2
    assert "--slurm: cpus_per_rank must be a non-negative integer, got 'many'" in capsys.readouterr().err
    assert cli(["grid", str(grid), "--dry-run", "--slurm", "partition"]) == 2
    assert "--slurm 'partition': expected KEY=VALUE" in capsys.readouterr().err
