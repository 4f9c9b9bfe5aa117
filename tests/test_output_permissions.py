"""Written files get the mode a plain open() gives under the user's umask (0666 less the umask), so
colleagues sharing a folder can read mask files, exported checkpoints and grid results: atomic
writes go through a temporary file, which must not keep a private 0600 mode."""
import os
import stat
from contextlib import contextmanager

import pytest
import torch

from fairseq_subnets.cli.main import main
from fairseq_subnets.engine.cells import Cell
from fairseq_subnets.engine.executors import LocalExecutor
from fairseq_subnets.engine.results import RESULTS_CSV, RESULTS_JSON, write_results
from fairseq_subnets.engine.scheduler import RESULT_FILE, run_cells
from test_masks_cli import tiny_wav2vec2_state

UMASKS = [(0o022, 0o644), (0o027, 0o640)]


@contextmanager
def process_umask(mask):
    """Sets this process's umask for the block and restores the previous one whatever happens."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    torch.save({"model": tiny_wav2vec2_state(), "cfg": {"model": {"_name": "wav2vec2"}}}, path)
    return str(path)


def finished(context):
    return {"loss": 0.5}


@pytest.mark.parametrize("umask, expected", UMASKS, ids=["umask-022", "umask-027"])
def test_mask_files_and_exported_checkpoints_follow_the_umask(umask, expected, checkpoint, tmp_path, capsys):
    mask, union, exported = tmp_path / "m.st", tmp_path / "u.st", tmp_path / "plain.pt"
    with process_umask(umask):
        assert main(["prune", checkpoint, "--method", "random", "--sparsity", "0.5", "--out", str(mask)]) == 0
        assert main(["masks", "union", str(mask), str(mask), "--out", str(union)]) == 0
        assert main(["export", checkpoint, "--mask", str(mask), "--out", str(exported)]) == 0
    capsys.readouterr()
    assert [oct(mode(path)) for path in (mask, union, exported)] == [oct(expected)] * 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.st", "plain.pt", "u.st"]


@pytest.mark.parametrize("umask, expected", UMASKS, ids=["umask-022", "umask-027"])
def test_grid_results_follow_the_umask(umask, expected, tmp_path):
    cell = Cell("one", tmp_path / "cells" / "one", finished, row={"cell": "one", "loss": ""})
    with process_umask(umask):
        results = run_cells([cell], LocalExecutor(1), say=lambda message: None)
        write_results(tmp_path, [cell], results, ["cell", "loss"])
    written = [tmp_path / RESULTS_CSV, tmp_path / RESULTS_JSON, tmp_path / "cells" / "one" / RESULT_FILE]
    assert [oct(mode(path)) for path in written] == [oct(expected)] * 3
