"""Stock fairseq-hydra-train runs killed with SIGKILL part-way, and the training state that a
resumed run must reproduce bit for bit."""
import time
from pathlib import Path

import torch

POLL_SECONDS = 0.05


def start_training(config_dir, config_name, overrides, log_path, threads=None):
    """fairseq-hydra-train with a shipped config, started in the background through the runner's
    launcher (as runner.hydra_train starts it), logging to log_path (`threads`: its
    OMP_NUM_THREADS)."""
    from fairseq_subnets.runner import fairseq_command, start_logged, thread_env

    return start_logged([fairseq_command("fairseq-hydra-train"), "--config-dir", config_dir, "--config-name",
                         config_name, *overrides], log_path, thread_env(threads))


def wait_finished(process, log_path):
    """Waits for a start_training run; fails with its log's tail unless it finished training."""
    from fairseq_subnets.runner import tail

    status = process.wait()
    text = Path(log_path).read_text(errors="replace")
    assert status == 0 and "done training" in text, f"exit {status}; {log_path}:\n{tail(text)}"


def interval_checkpoints(save_dir):
    """{update: path} of the checkpoint_<epoch>_<update>.pt files in save_dir."""
    found = {}
    for path in Path(save_dir).glob("checkpoint_*_*.pt"):
        found[int(path.stem.rsplit("_", 1)[1])] = path
    return found


def kill_at_random_update(process, save_dir, rng, delay_range=(0.0, 2.0), timeout=300):
    """SIGKILLs the run a random time after it wrote its first interval checkpoint, so at a random
    update past it, but at the latest when its second one appears: the interval after it leaves the
    run updates to do, where a fixed delay could outlast a fast run (a run killed while it exits
    after its last update would be resumed past max_update: stock fairseq trains one more update
    then). Waits until checkpoint_last.pt is a copy of the newest interval checkpoint first, so
    that the kill falls at an update, not inside a save (kills inside saves are
    tests/test_interrupted_saves.py's). Returns the delay used."""
    deadline = time.monotonic() + timeout
    while not interval_checkpoints(save_dir):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the run ended or stalled before its first checkpoint (exit {process.poll()})")
        time.sleep(POLL_SECONDS)
    delay = rng.uniform(*delay_range)
    started = time.monotonic()
    while time.monotonic() - started < delay and len(interval_checkpoints(save_dir)) < 2:
        time.sleep(0.005)
    last = Path(save_dir) / "checkpoint_last.pt"
    while True:
        newest = interval_checkpoints(save_dir)
        newest = newest[max(newest)]
        if last.exists() and last.stat().st_size == newest.stat().st_size:
            break
        time.sleep(0.005)
    if process.poll() is not None:
        raise AssertionError("the run finished before it could be killed: give it more updates")
    process.kill()
    process.wait()
    return delay


def training_state(path):
    """Everything a resumed run must reproduce: weights and masks, optimizer and scheduler state,
    the update count and the data iterator's position."""
    from fairseq_subnets.plugin.formats.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(path)
    history = checkpoint["optimizer_history"][-1]
    return {
        "model": checkpoint["model"],
        "optimizer": checkpoint["last_optimizer_state"],
        "num_updates": history["num_updates"],
        "lr_scheduler": history["lr_scheduler_state"],
        "train_iterator": checkpoint["extra_state"]["train_iterator"],
    }


def differences(first, second, where=""):
    """Paths at which two nested states differ (tensors compared bit for bit)."""
    if torch.is_tensor(first) or torch.is_tensor(second):
        same = torch.is_tensor(first) and torch.is_tensor(second) and first.dtype == second.dtype \
            and first.shape == second.shape and torch.equal(first, second)
        return [] if same else [where]
    if isinstance(first, dict) and isinstance(second, dict):
        if first.keys() != second.keys():
            return [f"{where} keys {sorted(map(str, first.keys() ^ second.keys()))}"]
        return [found for key in first for found in differences(first[key], second[key], f"{where}/{key}")]
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        if len(first) != len(second):
            return [f"{where} length"]
        return [found for index, (a, b) in enumerate(zip(first, second))
                for found in differences(a, b, f"{where}[{index}]")]
    return [] if first == second else [where]


def assert_bit_identical(first_checkpoint, second_checkpoint):
    found = differences(training_state(first_checkpoint), training_state(second_checkpoint))
    assert not found, f"{first_checkpoint} and {second_checkpoint} differ at {found[:10]} ({len(found)} in all)"
