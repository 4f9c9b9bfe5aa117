"""CPU threads of the stock-fairseq subprocesses: a run's thread budget is shared out between its
ranks, so a grid with parallel cells and several ranks per cell does not oversubscribe the CPU.
A stand-in for fairseq-hydra-train (a script printing its OMP_NUM_THREADS) keeps this fast."""
import stat
import sys

import pytest

from fairseq_subnets import runner

FAKE_TRAIN = f"""#!{sys.executable}
import os
print("OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "unset"))
print("done training")
"""


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake-fairseq-hydra-train"
    script.write_text(FAKE_TRAIN)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(runner, "fairseq_command", lambda name: str(script))
    monkeypatch.setenv("OMP_NUM_THREADS", "99")
    return tmp_path


def threads_logged(text):
    return text.split("OMP_NUM_THREADS=")[1].split()[0]


@pytest.mark.parametrize("world_size, threads, expected", [
    (1, 3, "3"), (2, 4, "2"), (2, 3, "1"), (3, 2, "1"), (1, None, "99"),
])
def test_a_run_shares_its_threads_between_its_ranks(fake_train, world_size, threads, expected):
    text = runner.hydra_train("tiny", [], fake_train / "train.log", world_size=world_size, threads=threads)
    assert threads_logged(text) == expected
    if world_size > 1:
        for rank in range(world_size):
            assert threads_logged((fake_train / f"train_rank{rank}.log").read_text()) == expected


def test_ranks_without_a_budget_share_every_core(fake_train, monkeypatch):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 8)
    assert threads_logged(runner.hydra_train("tiny", [], fake_train / "train.log", world_size=2)) == "4"
