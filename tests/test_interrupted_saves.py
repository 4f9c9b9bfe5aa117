"""A kill at any instant of a save is survivable (plugin.components.resume).

Stock fairseq writes each checkpoint to a temporary file renamed into place, then makes
checkpoint_last.pt by a plain copy; the plugin makes that copy atomic, and a training run that
finds checkpoint_last.pt damaged (a kill inside a copy by another version, a full disk) resumes
from the newest complete checkpoint in save_dir. What is tested, and how (kills -9 at 20 instants
of real saves, inside the atomic copy among them, are tests/test_kill_during_save.py's):
- checkpoint_last.pt cut at 20 byte offsets spread over the file (0: empty): each falls back to
  the newest complete checkpoint and names both files;
- through stock fairseq-hydra-train (slow): a run killed the instant its second save begins, its
  checkpoint_last.pt then cut in half (what a kill inside stock's copy leaves), rerun with the same
  command: it says which file it resumes from and ends bit-identical to an uninterrupted run; that
  finished run rerun with a larger `optimization.max_update` trains on to it (a key that takes
  effect on resume), and rerun with a changed model key stops with one line before any update.
"""
import os
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from interrupted_runs import assert_bit_identical, start_training, training_state, wait_finished

CUT_POINTS = 20
POLL_SECONDS = 0.002


def checkpoint_section(save_dir):
    """The run's `checkpoint` config section as fairseq's trainer gets it (defaults elsewhere)."""
    return OmegaConf.create({"save_dir": str(save_dir), "restore_file": "checkpoint_last.pt"})


@pytest.fixture(scope="module")
def complete_checkpoints(tmp_path_factory):
    """{updates: path} of two small checkpoints laid out as fairseq's trainer writes them."""
    from factory import write_plugin_checkpoint

    folder = tmp_path_factory.mktemp("complete")
    checkpoint = torch.load(write_plugin_checkpoint(folder)[0], weights_only=True)
    written = {}
    for updates in (2, 4):
        checkpoint["optimizer_history"][-1]["num_updates"] = updates
        written[updates] = folder / f"at_{updates}.pt"
        torch.save(checkpoint, written[updates])
    return written


@pytest.fixture
def save_dir(tmp_path, complete_checkpoints):
    """save_dir with checkpoint_1_2.pt and, written later, checkpoint_1_4.pt."""
    import shutil

    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copyfile(complete_checkpoints[2], folder / "checkpoint_1_2.pt")
    os.utime(folder / "checkpoint_1_2.pt", (1, 1))
    shutil.copyfile(complete_checkpoints[4], folder / "checkpoint_1_4.pt")
    return folder


@pytest.mark.parametrize("cut", range(CUT_POINTS))
def test_a_damaged_checkpoint_last_falls_back_to_the_newest_complete_checkpoint(cut, save_dir, caplog):
    """checkpoint_last.pt cut at the start of one of CUT_POINTS equal parts of the file (the first:
    emptied): the run resumes from checkpoint_1_4.pt, the newest complete one, and one line names
    both files; checkpoint.restore_file then names the fallback, which fairseq loads."""
    from fairseq_subnets.plugin.components.resume import resume_checkpoint

    complete = (save_dir / "checkpoint_1_4.pt").read_bytes()
    length = len(complete) * cut // CUT_POINTS
    last = save_dir / "checkpoint_last.pt"
    last.write_bytes(complete[:length])
    section = checkpoint_section(save_dir)
    path, checkpoint = resume_checkpoint(section)
    assert (path, checkpoint["optimizer_history"][-1]["num_updates"]) == (save_dir / "checkpoint_1_4.pt", 4)
    assert section.restore_file == str(save_dir / "checkpoint_1_4.pt")
    warned = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warned) == 1 and str(last) in warned[0] and f"resuming from {path}" in warned[0], warned


def bytes_read_by_this_process():
    """What this process has read through read() calls so far (pages of a memory-mapped file
    that are never touched are not read)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def test_the_resume_check_reads_the_config_of_checkpoint_last_but_not_its_tensors(save_dir):
    """fairseq reads checkpoint_last.pt whole when it resumes; the check before it (readable, same
    settings) must not read the tensors a second time (1.2 GB at XLS-R size)."""
    from fairseq_subnets.plugin.components.resume import resume_checkpoint

    checkpoint = torch.load(save_dir / "checkpoint_1_4.pt", weights_only=True)
    checkpoint["model"]["large"] = torch.ones(16 << 20, dtype=torch.uint8)
    torch.save(checkpoint, save_dir / "checkpoint_last.pt")
    size = (save_dir / "checkpoint_last.pt").stat().st_size
    before = bytes_read_by_this_process()
    path, resumed = resume_checkpoint(checkpoint_section(save_dir))
    read = bytes_read_by_this_process() - before
    assert (path, resumed["optimizer_history"][-1]["num_updates"]) == (save_dir / "checkpoint_last.pt", 4)
    assert read < size // 8, f"read {read} of the checkpoint's {size} bytes"


TINY_RUN = ("optimization.max_update=8", "checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=-1",
            "dataset.disable_validation=true", "dataset.batch_size=2")
"""Batches of two utterances: what is checked needs updates and saves, not learning, and the
Catalan folder then holds far more updates than a run makes, so every save is one of epoch 1."""


def kill_when_save_begins(process, save_dir, timeout=300):
    """SIGKILLs the run the instant its second interval save appears on disk (fairseq's temporary
    file or the checkpoint itself), i.e. inside that save: the first has written
    checkpoint_last.pt."""
    deadline = time.monotonic() + timeout
    while not list(save_dir.glob("checkpoint_1_4.pt*")):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the run ended or stalled before its second save (exit {process.poll()})")
        time.sleep(POLL_SECONDS)
    process.kill()
    process.wait()


@pytest.mark.slow
def test_runs_killed_inside_a_save_resume_and_changed_settings_take_effect_or_stop(skeleton_run, tmp_path):
    from fairseq_subnets import USER_DIR
    from fairseq_subnets.runner import CONFIG_DIR

    _, result = skeleton_run
    config_dir = CONFIG_DIR / "finetune"
    arguments = [f"common.user_dir={USER_DIR}", f"model.w2v_path={result.pretrained_checkpoint}",
                 f"task.data={Path(result.corpus_dir) / 'ca'}", *TINY_RUN]
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"

    def train(save_dir, log, *extra):
        return start_training(config_dir, "tiny", [*arguments, f"checkpoint.save_dir={save_dir}", *extra],
                              tmp_path / log, threads=1)

    reference = train(uninterrupted, "uninterrupted.log")
    kill_when_save_begins(train(interrupted, "killed.log"), interrupted)
    last = interrupted / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:last.stat().st_size // 2])
    rerun = train(interrupted, "rerun.log")
    wait_finished(reference, tmp_path / "uninterrupted.log")
    longer = train(uninterrupted, "longer.log", "optimization.max_update=10")
    wait_finished(rerun, tmp_path / "rerun.log")
    assert f"{last}: damaged torch checkpoint" in (tmp_path / "rerun.log").read_text()
    assert_bit_identical(uninterrupted / "checkpoint_1_8.pt", interrupted / "checkpoint_last.pt")

    wait_finished(longer, tmp_path / "longer.log")
    assert "(epoch 1 @ 8 updates)" in (tmp_path / "longer.log").read_text()
    assert training_state(uninterrupted / "checkpoint_last.pt")["num_updates"] == 10
    before = (uninterrupted / "checkpoint_last.pt").read_bytes()
    refused = train(uninterrupted, "refused.log", "optimization.max_update=12", "criterion.zero_infinity=false")
    assert refused.wait() == 2
    lines = (tmp_path / "refused.log").read_text().strip().splitlines()
    assert lines[-1].startswith(f"fairseq-hydra-train: error: criterion.zero_infinity=False differs from the True "
                                f"that {uninterrupted / 'checkpoint_last.pt'} was trained with"), lines[-1]
    assert (uninterrupted / "checkpoint_last.pt").read_bytes() == before
