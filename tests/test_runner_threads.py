"""CPU threads of the stock-fairseq subprocesses: a run's thread budget is shared out between its
ranks, so a grid with parallel cells and several ranks per cell does not oversubscribe the CPU.
A stand-in for fairseq-hydra-train (a script printing its OMP_NUM_THREADS), started as users' runs
are (runner.SubprocessLauncher, not the tests' fork server), keeps this fast. Every command the
runner starts goes through its one replaceable launcher."""
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
    replaced = runner.use_launcher(runner.SubprocessLauncher())
    yield tmp_path
    runner.use_launcher(replaced)


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


class RecordingLauncher:
    """A launcher that starts nothing: it records each command and hands back a finished process
    whose log says it trained."""

    def __init__(self):
        self.started = []

    def start(self, command, log_path, env=None):
        self.started.append((command, log_path.read_text(), env))
        with open(log_path, "a") as log:
            log.write("done training\n")
        return FinishedProcess()


class FinishedProcess:
    pid, returncode = 0, 0

    def poll(self):
        return 0

    def wait(self):
        return 0


def test_every_command_the_runner_starts_goes_through_the_installed_launcher(tmp_path, monkeypatch):
    """One process and two CPU ranks: each command after its log's first line, which shows it, with
    the thread budget in its environment."""
    monkeypatch.setattr(runner, "fairseq_command", lambda name: f"/venv/bin/{name}")
    launcher = RecordingLauncher()
    replaced = runner.use_launcher(launcher)
    try:
        runner.hydra_train("tiny", ["common.seed=3"], tmp_path / "one" / "train.log", threads=2)
        runner.hydra_train("tiny", ["common.seed=3"], tmp_path / "two" / "train.log", world_size=2, threads=2)
    finally:
        assert runner.use_launcher(replaced) is launcher
    assert len(launcher.started) == 3
    for command, log_text, env in launcher.started:
        assert command[0] == "/venv/bin/fairseq-hydra-train" and "common.seed=3" in command
        assert log_text == "$ " + " ".join(command) + "\n"
    assert [env["OMP_NUM_THREADS"] for _, _, env in launcher.started] == ["2", "1", "1"]
    assert [command[-1] for command, _, _ in launcher.started[1:]] == [
        "hydra.run.dir=${checkpoint.save_dir}/hydra_rank0", "hydra.run.dir=${checkpoint.save_dir}/hydra_rank1"]
