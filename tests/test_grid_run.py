"""A CPU-sized grid through the real CLI: killed midway, run again, complete and consistent.

The grid runs as a process of its own, in a session of its own, which the test kills with SIGKILL
(its whole process group at once, as when a machine goes down) and then runs again. That process
is the `fairseq-subnets` console script's entry point (`fairseq_subnets.cli.main.main`) on the same
arguments, started as `python -c GRID_WITH_FORK_SERVER ARGUMENTS...`, which first makes the runner
start the cells' fairseq commands through the tests' fork server (tests/forked_commands.py), as
every other test's commands start: a fresh interpreter per command would import fairseq and
torch._dynamo again for each cell. The fork server and the commands it forks belong to the grid's
process group, so the kill takes them down with it, which the fixture checks."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import assert_pruned_weights_zero

pytestmark = pytest.mark.slow

KILL_AFTER_FINISHED_CELLS = 3
GROUP_END_SECONDS = 30
"""How long the killed grid's processes may take to disappear (their parent, the system's first
process, reaps orphans when it gets to them)."""

GRID_WITH_FORK_SERVER = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from forked_commands import ForkingLauncher
    from fairseq_subnets import runner
    from fairseq_subnets.cli.main import main
    launcher = ForkingLauncher()
    runner.use_launcher(launcher)
    try:
        status = main(sys.argv[1:])
    finally:
        launcher.close()
    sys.exit(status)
""")
"""`fairseq-subnets ARGUMENTS...` with every fairseq command forked from one fork server."""


def grid_command(grid, out):
    return [sys.executable, "-c", GRID_WITH_FORK_SERVER, "grid", str(grid), "--out", str(out), "--jobs", "2",
            "--quiet"]


def group_members(group):
    """The pids of the processes (zombies included) whose process group is `group`, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after the command name, which may hold spaces
        except OSError:  # it ended while being listed
            continue
        if int(fields[2]) == group:
            members.append(int(stat.parent.name))
    return members


def group_ended(group, seconds):
    """Whether no process of `group` is left within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def finished_cells(out):
    return sorted((out / "cells").glob("*/result.json"))


def started_unfinished_cells(out):
    """The folders of the cells that have started (a cell's folder appears when it starts) and
    have no result yet."""
    return [d for d in (out / "cells").glob("*") if d.is_dir() and not (d / "result.json").exists()]


@pytest.fixture(scope="module")
def killed_and_resumed_grid(skeleton_run, tmp_path_factory):
    _, result = skeleton_run
    work = tmp_path_factory.mktemp("grid")
    grid = work / "grid.yaml"
    grid.write_text("\n".join([
        "method: storey2025", "name: ci", f"data: {result.corpus_dir}", f"pretrained: {result.pretrained_checkpoint}",
        "upstream: {languages: [ca, ast], updates: 10}",
        "prune: {sparsities: [0.5]}",
        "downstream: {languages: [ca], sources: [own, 'swap:ca', 'union:ca'], epochs: 1, max_tokens: 800000}",
    ]) + "\n")
    out = work / "out"
    first = subprocess.Popen(grid_command(grid, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 900
    # killed while a cell runs, not between two: a kill in the gap would leave nothing to resume
    while ((len(finished_cells(out)) < KILL_AFTER_FINISHED_CELLS or not started_unfinished_cells(out))
           and first.poll() is None):
        assert time.monotonic() < deadline, "grid made no progress"
        time.sleep(1)
    killed = group_members(first.pid)
    assert len(killed) > 1, f"the fork server is not in the grid's process group: {killed}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert group_ended(first.pid, GROUP_END_SECONDS), f"the killed grid's processes live on: {group_members(first.pid)}"
    before = {path.parent.name: path.read_text() for path in finished_cells(out)}
    interrupted = {d.name: (d / "checkpoint_last.pt").exists()
                   for d in (out / "cells").iterdir() if not (d / "result.json").exists()}
    completed = subprocess.run(grid_command(grid, out), capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, before, interrupted


def read_rows(out):
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_resumed_grid_has_a_complete_results_table(killed_and_resumed_grid):
    out, before, interrupted = killed_and_resumed_grid
    rows = read_rows(out)
    downstream = [row for row in rows if row["stage"] == "downstream"]
    assert len([row for row in rows if row["stage"] == "upstream"]) == 2
    assert len(downstream) == 2 + 2  # own: 2 upstream x 1 sparsity; swap:ca and union:ca on the ast model
    assert all(row["cer"] and 0 <= float(row["cer"]) for row in rows)
    assert len({row["cell"] for row in rows}) == len(rows)
    stored = json.loads((out / "results.json").read_text())
    assert [cell["cell"] for cell in stored["cells"]] == [row["cell"] for row in rows]
    assert len(before) >= KILL_AFTER_FINISHED_CELLS and interrupted


def test_finished_cells_are_skipped_and_unfinished_ones_resume(killed_and_resumed_grid):
    out, before, interrupted = killed_and_resumed_grid
    for name, text in before.items():
        assert (out / "cells" / name / "result.json").read_text() == text
    for name in [name for name, had_checkpoint in interrupted.items() if had_checkpoint]:
        log = (out / "cells" / name / "train.log").read_text()
        assert "Loaded checkpoint" in log or "loaded checkpoint" in log


def test_every_saved_checkpoint_keeps_its_cells_mask_with_pruned_weights_zero(killed_and_resumed_grid):
    from fairseq_subnets.core.maskfile import load_mask_file

    out, _, _ = killed_and_resumed_grid
    masked = [row for row in read_rows(out) if row["stage"] == "downstream" and float(row["sparsity"]) > 0]
    assert masked
    for row in masked:
        expected = load_mask_file(row["mask_path"]).masks
        checkpoints = sorted(Path(row["checkpoint"]).parent.glob("checkpoint*.pt"))
        assert checkpoints
        for checkpoint in checkpoints:
            assert_pruned_weights_zero(checkpoint, expected)


def test_swap_and_union_cells_use_the_specified_masks(killed_and_resumed_grid):
    from fairseq_subnets.core.maskfile import load_mask_file

    out, _, _ = killed_and_resumed_grid
    rows = {row["cell"]: row for row in read_rows(out)}
    own = {lang: load_mask_file(rows[f"{lang}-ca-s0.50-own-seed1"]["mask_path"]).masks for lang in ("ca", "ast")}
    swap = load_mask_file(rows["ast-ca-s0.50-swap_ca-seed1"]["mask_path"]).masks
    union = load_mask_file(rows["ast-ca-s0.50-union_ca-seed1"]["mask_path"]).masks
    assert swap.keys() == own["ca"].keys()
    assert all(torch.equal(swap[name], own["ca"][name]) for name in swap)
    assert all(torch.equal(union[name], own["ca"][name] | own["ast"][name]) for name in union)
    union_row = rows["ast-ca-s0.50-union_ca-seed1"]
    assert union_row["mask_language"] == "ast+ca" and float(union_row["mask_sparsity"]) < 0.5
    assert not any(torch.equal(own["ca"][name], own["ast"][name]) for name in own["ca"])


def test_iou_table_and_report_render_from_the_grid(killed_and_resumed_grid, tmp_path):
    from fairseq_subnets.cli.main import main as cli

    out, _, _ = killed_and_resumed_grid
    with open(out / "iou.csv", newline="") as handle:
        pairs = {(row["a"], row["b"]) for row in csv.DictReader(handle)}
    assert pairs == {("base", "ca"), ("base", "ast"), ("ca", "ast")}
    assert cli(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").exists()
    assert (tmp_path / "report" / "swap_table.md").exists() and (tmp_path / "report" / "union_table.md").exists()
