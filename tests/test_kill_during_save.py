"""A kill -9 at any instant of a save is survivable: one training run killed at 20 instants spread
over its saves, each rerun resuming from what the previous kill left, ends bit-identical to the
same command run uninterrupted.

fairseq saves by writing checkpoint_<epoch>_<update>.pt (to a `.tmp` file renamed into place),
then copying it to checkpoint_last.pt (made atomic by the plugin, plugin.components.resume), then
removing old interval checkpoints. The instants, at each of four saves: the save begins; the
`.tmp` file is partly written; it is renamed into place; the copy to checkpoint_last.pt is partly
done; the save is over. The fractions of the partial writes and copies differ from save to save.

A tiny model's save takes milliseconds, too short to hit by timing, so the killed runs are started
through the tests' fork server as `python -c STOPPING_TRAINER SCRIPT ARGUMENTS...`: a child that
wraps fairseq's save functions and, at the one instant named by the environment variable
INSTANT_VARIABLE, writes what it has written so far, leaves a marker file and waits; the test then
kills it with SIGKILL. Only this test's launcher code reads the variable; the plugin's own code
paths run unchanged (the uninterrupted and the final run are plain fairseq-hydra-train). Each
rerun costs the fork, the plugin's import and a few updates: no fresh fairseq import.

Checked at every kill: checkpoint_last.pt is unchanged unless the save was over (then it holds
that save's update), and the rerun loads exactly it (or starts afresh when the first save never
got there); a partial copy left by a kill inside the copy is removed when the rerun starts.
"""
import hashlib
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fairseq_subnets import USER_DIR
from interrupted_runs import assert_bit_identical, start_training, training_state, wait_finished

pytestmark = pytest.mark.slow

INSTANT_VARIABLE = "SUBNETS_TEST_STOP_AT"
"""UPDATE:PHASE[:FRACTION] of the save at which the stopping trainer waits to be killed."""
MARKER_VARIABLE = "SUBNETS_TEST_STOP_MARKER"
"""The file the stopping trainer writes once it waits there."""
SAVE_EVERY = 2
SAVES = (2, 4, 6, 8)
MAX_UPDATE = 10
"""Past the last killed save, so every kill leaves updates to do (a run killed after saving its
last update would be resumed past max_update: stock fairseq trains one more update then)."""
PHASES = ("save-begins", "writing", "written", "copying", "saved")
FRACTIONS = {"writing": (0.1, 0.35, 0.6, 0.85), "copying": (0.05, 0.3, 0.55, 0.95)}
"""How much of the checkpoint is written, or copied, when the kill comes, at each save in turn."""
INSTANTS = [(update, phase, FRACTIONS[phase][index] if phase in FRACTIONS else None)
            for index, update in enumerate(SAVES) for phase in PHASES]
UTTERANCES = 24
UTTERANCE_SAMPLES = 8000
BATCH_SIZE = 2
"""12 updates per epoch: every save is an interval save of the first epoch."""
STOP_TIMEOUT = 240
LAST = "checkpoint_last.pt"

STOPPING_TRAINER = textwrap.dedent("""
    import io, os, shutil, sys, time
    import torch
    from fairseq import checkpoint_utils
    from fairseq_cli.hydra_train import cli_main

    update, phase, *fraction = os.environ["SUBNETS_TEST_STOP_AT"].split(":")
    update, fraction = int(update), float(fraction[0]) if fraction else None
    saving = False

    def stop():
        with open(os.environ["SUBNETS_TEST_STOP_MARKER"], "w") as marker:
            marker.write(phase)
        while True:
            time.sleep(1)

    stock_save_checkpoint = checkpoint_utils.save_checkpoint
    def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
        global saving
        saving = trainer.get_num_updates() == update
        if saving and phase == "save-begins":
            stop()
        result = stock_save_checkpoint(cfg, trainer, epoch_itr, val_loss)
        if saving and phase == "saved":
            stop()
        return result

    stock_persistent_save = checkpoint_utils.torch_persistent_save
    def torch_persistent_save(obj, filename, async_write=False):
        if saving and phase == "writing":
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            with open(filename + ".tmp", "wb") as written:
                written.write(buffer.getvalue()[:int(len(buffer.getvalue()) * fraction)])
            stop()
        stock_persistent_save(obj, filename, async_write)
        if saving and phase == "written":
            stop()

    stock_copyfileobj = shutil.copyfileobj
    def copyfileobj(source, destination, length=0):
        if saving and phase == "copying":
            data = source.read()
            destination.write(data[:int(len(data) * fraction)])
            destination.flush()
            stop()
        return stock_copyfileobj(source, destination, length)

    checkpoint_utils.save_checkpoint = save_checkpoint
    checkpoint_utils.torch_persistent_save = torch_persistent_save
    shutil.copyfileobj = copyfileobj
    sys.argv = sys.argv[1:]
    cli_main()
""")
"""fairseq-hydra-train (its script path and arguments follow the code) that stops at the instant
INSTANT_VARIABLE names and waits there to be killed: the save functions are looked up through
their modules when called (fairseq_cli.train, fairseq's trainer, the plugin's atomic copy)."""


def write_corpus(folder: Path) -> Path:
    """UTTERANCES noise utterances with two-letter transcripts, as train and valid splits."""
    rng = np.random.default_rng(0)
    (folder / "audio").mkdir(parents=True)
    names = []
    for index in range(UTTERANCES):
        names.append(f"audio/{index}.wav")
        soundfile.write(folder / names[-1], rng.uniform(-0.3, 0.3, UTTERANCE_SAMPLES), 16000)
    for split in ("train", "valid"):
        (folder / f"{split}.tsv").write_text(f"{folder}\n" + "".join(f"{name}\t{UTTERANCE_SAMPLES}\n" for name in names))
        (folder / f"{split}.ltr").write_text("".join(f"{'ab'[i % 2]} {'ab'[i // 2 % 2]} |\n" for i in range(UTTERANCES)))
    (folder / "dict.ltr.txt").write_text("| 100\na 50\nb 50\n")
    return folder


@pytest.fixture(scope="module")
def training_command(tmp_path_factory):
    """(config folder, config name, overrides without the save dir) of a tiny fine-tuning run on an
    untrained TINY model with the tiny pretraining config's narrow convolutions (fairseq's default
    ones would make each checkpoint, written, copied and read at every kill, over 20 times larger)."""
    from omegaconf import OmegaConf

    from grid_files import write_pretrained
    from fairseq_subnets.runner import CONFIG_DIR

    folder = tmp_path_factory.mktemp("kill_inputs")
    narrow = OmegaConf.load(CONFIG_DIR / "pretrain" / "tiny.yaml").model.conv_feature_layers
    pretrained = write_pretrained(folder / "pretrained.pt", conv_feature_layers=narrow)
    corpus = write_corpus(folder / "corpus")
    return CONFIG_DIR / "finetune", "tiny", [
        f"common.user_dir={USER_DIR}", f"model.w2v_path={pretrained}", f"task.data={corpus}",
        f"optimization.max_update={MAX_UPDATE}", f"checkpoint.save_interval_updates={SAVE_EVERY}",
        f"dataset.batch_size={BATCH_SIZE}", "dataset.disable_validation=true"]


def start_stopping_at(instant, training_command, save_dir, log, marker):
    """The run, forked from the fork server, set to stop at `instant` (update, phase, fraction)."""
    from fairseq_subnets.runner import fairseq_command, start_logged, thread_env

    config_dir, config_name, overrides = training_command
    update, phase, fraction = instant
    env = {**thread_env(1), INSTANT_VARIABLE: ":".join(str(part) for part in (update, phase, fraction) if part is not None),
           MARKER_VARIABLE: str(marker)}
    return start_logged([sys.executable, "-c", STOPPING_TRAINER, fairseq_command("fairseq-hydra-train"),
                         "--config-dir", config_dir, "--config-name", config_name, *overrides,
                         f"checkpoint.save_dir={save_dir}"], log, env)


def kill_when_stopped(process, marker, log):
    """Kills the run with SIGKILL once it waits at its instant (its marker file exists)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while not marker.exists():
        assert process.poll() is None, f"exit {process.poll()} before the instant; {log}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the run never reached the instant; {log}"
        time.sleep(0.02)
    process.kill()
    assert process.wait() == -9


def last_state(save_dir):
    """(sha256 of checkpoint_last.pt's bytes, its update count), or (None, None) without one."""
    last = save_dir / LAST
    if not last.exists():
        return None, None
    return hashlib.sha256(last.read_bytes()).hexdigest(), training_state(last)["num_updates"]


def assert_resumed(log, save_dir, updates):
    """The run's log says it loaded checkpoint_last.pt at `updates`, or started afresh (None)."""
    text = log.read_text()
    if updates is None:
        assert f"No existing checkpoint found {save_dir / LAST}" in text, f"{log}: did not start afresh"
    else:
        assert f"Loaded checkpoint {save_dir / LAST} (epoch 1 @ {updates} updates)" in text, \
            f"{log}: did not resume from {LAST} at update {updates}"


def test_a_run_killed_at_20_instants_of_its_saves_resumes_each_time_and_ends_bit_identical(training_command,
                                                                                         tmp_path):
    config_dir, config_name, overrides = training_command
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = start_training(config_dir, config_name, [*overrides, f"checkpoint.save_dir={uninterrupted}"],
                               tmp_path / "uninterrupted.log", threads=1)
    resumes_at, partial_copies = None, []
    for number, instant in enumerate(INSTANTS):
        update, phase, _ = instant
        log, marker = tmp_path / f"killed-{number}.log", tmp_path / f"stopped-{number}"
        before = last_state(killed)
        kill_when_stopped(start_stopping_at(instant, training_command, killed, log, marker), marker, log)
        assert_resumed(log, killed, resumes_at)
        assert not [path for path in partial_copies if path.exists()], f"{log}: a killed copy's partial file was left"
        after = last_state(killed)
        if phase == "saved":
            assert after[1] == update, f"{instant}: {LAST} holds update {after[1]}"
        else:
            assert after == before, f"{instant}: {LAST} changed in a save that did not finish"
        partial_copies = sorted(killed.glob(f".{LAST}.*.partial"))
        assert bool(partial_copies) == (phase == "copying"), f"{instant}: partial copies {partial_copies}"
        resumes_at = after[1]
    final = start_training(config_dir, config_name, [*overrides, f"checkpoint.save_dir={killed}"],
                           tmp_path / "final.log", threads=1)
    wait_finished(final, tmp_path / "final.log")
    assert_resumed(tmp_path / "final.log", killed, resumes_at)
    wait_finished(reference, tmp_path / "uninterrupted.log")
    assert training_state(killed / LAST)["num_updates"] == MAX_UPDATE
    assert_bit_identical(uninterrupted / LAST, killed / LAST)
