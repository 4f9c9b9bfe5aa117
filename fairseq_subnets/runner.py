"""Runs the stock fairseq entry points as subprocesses and reads their results.

Everything we train or decode goes through `fairseq-hydra-train` and `fairseq-generate` exactly as a
user would run them; this module only builds their command lines, keeps their logs, and refuses to
call a run successful when fairseq exited 0 having trained or decoded nothing.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import USER_DIR
from .component_names import PLUGIN_FINETUNING_TASK
from .scoring import error_rates

CONFIG_DIR = Path(USER_DIR) / "config"
DECODE_MAX_TOKENS = 1_600_000
"""Raw samples per decoding batch (100 s of 16 kHz audio); fairseq-generate's own default is 12000."""

LOG_TAIL_LINES = 40


class RunError(RuntimeError):
    """A fairseq run failed; the message holds the command's log file and its last lines."""


def fairseq_command(name):
    """The console script installed beside the running interpreter (the project's venv)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RunError(f"{name} not found beside {sys.executable} nor on PATH; run `make setup`")
    return found


class SubprocessLauncher:
    """Starts each fairseq console command as a fresh process, as a user's shell would: how every
    grid, the demo and `fairseq-subnets launch` run. A launcher is the one thing that starts a
    fairseq command in this module, so another (the tests fork commands from one process that
    imported fairseq once) can take its place through `use_launcher`."""

    def start(self, command, log_path, env=None):
        """Starts `command` (a console script and its arguments) with stdout and stderr appended to
        `log_path`, in this process's working directory, with `env` (None: this process's); returns
        a handle with Popen's pid, poll(), wait(), terminate() and kill()."""
        with open(log_path, "a") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


_launcher = SubprocessLauncher()


def use_launcher(launcher):
    """Makes `launcher` start every fairseq command run from now on; returns the one it replaces."""
    global _launcher
    replaced, _launcher = _launcher, launcher
    return replaced


def start_logged(command, log_path, env=None):
    """Starts `command` with the current launcher, its output in `log_path` after a first line
    showing the command; returns the process handle."""
    command = [str(part) for part in command]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("$ " + " ".join(command) + "\n")
    return _launcher.start(command, log_path, env)


def run_logged(command, log_path, env=None):
    """Runs `command`, writing stdout and stderr to `log_path`; raises RunError on failure."""
    process = start_logged(command, log_path, env)
    try:
        status = process.wait()
    except BaseException:  # as subprocess.run: an interrupted wait takes the command down with it
        process.kill()
        process.wait()
        raise
    text = Path(log_path).read_text(errors="replace")
    if status != 0:
        raise RunError(f"{command[0]} exited with {status}; log {log_path}:\n{tail(text)}")
    return text


def tail(text, lines=LOG_TAIL_LINES):
    return "\n".join(text.splitlines()[-lines:])


def hydra_train(config_name, overrides, log_path, config_dir=CONFIG_DIR / "finetune", world_size=1, threads=None,
                gpus=0):
    """`fairseq-hydra-train --config-dir DIR --config-name NAME overrides...`, on `world_size` CPU
    ranks (see launch_cpu_ranks) when it is above 1. `threads`: CPU threads for the whole run,
    shared out between its ranks (None: one process keeps this environment's OMP_NUM_THREADS,
    ranks share every core). With `gpus` (a job given GPUs) it is one fairseq process on the GPUs
    that starts its `world_size` ranks itself (fairseq's own distributed training).

    Paths in overrides must be absolute (Hydra changes the working directory). Returns the log text
    (rank 0's).
    """
    arguments = ["--config-dir", config_dir, "--config-name", config_name, *overrides]
    if gpus:
        arguments += ["common.cpu=false", f"distributed_training.distributed_world_size={world_size}"]
    elif world_size > 1:
        log_path = Path(log_path)
        threads_per_rank = max(1, threads // world_size) if threads else None
        return launch_cpu_ranks(arguments, world_size, log_path.parent, log_path.stem,
                                threads_per_rank=threads_per_rank)[0]
    text = run_logged([fairseq_command("fairseq-hydra-train"), *arguments], log_path, env=thread_env(threads))
    require_finished(text, log_path)
    return text


def thread_env(threads):
    """This process's environment with OMP_NUM_THREADS=threads (None: unchanged)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None


def require_finished(text, log_path):
    if "done training" not in text:
        raise RunError(f"fairseq-hydra-train exited 0 without finishing training; log {log_path}:\n{tail(text)}")


def cpu_rank_overrides(world_size, rank, port):
    """What makes one stock fairseq-hydra-train process one rank of a CPU run. Stock fairseq cannot
    start CPU ranks itself: its spawn counts GPUs (0 processes, exit 0, nothing trained), torchrun
    divides by the GPU count, NCCL needs GPUs and pytorch_ddp rejects device ids on CPU."""
    return [
        f"distributed_training.distributed_world_size={world_size}",
        f"distributed_training.distributed_rank={rank}",
        f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
        "distributed_training.distributed_no_spawn=true",
        "distributed_training.distributed_backend=gloo",
        "distributed_training.ddp_backend=legacy_ddp",
        "distributed_training.device_id=0",
        f"hydra.run.dir=${{checkpoint.save_dir}}/hydra_rank{rank}",
    ]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_cpu_ranks(train_arguments, world_size, log_dir, log_name="train", port=None, threads_per_rank=None):
    """Runs `fairseq-hydra-train train_arguments...` as `world_size` gloo ranks on this machine.

    Rank r logs to `log_dir/<log_name>_rank<r>.log`. If any rank fails the others are stopped and
    RunError names the failing rank's log; rank 0 must report finished training. Returns the
    logs' texts by rank.
    """
    port = port or free_port()
    env = thread_env(threads_per_rank or max(1, (os.cpu_count() or 1) // world_size))
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_paths = [log_dir / f"{log_name}_rank{rank}.log" for rank in range(world_size)]
    processes = [start_logged([fairseq_command("fairseq-hydra-train"), *train_arguments,
                               *cpu_rank_overrides(world_size, rank, port)], log_path, env)
                 for rank, log_path in enumerate(log_paths)]
    failed = wait_all_or_first_failure(processes)
    if failed is not None:
        text = log_paths[failed].read_text(errors="replace")
        raise RunError(f"rank {failed} of {world_size} exited with {processes[failed].returncode}; "
                       f"log {log_paths[failed]}:\n{tail(text)}")
    texts = [path.read_text(errors="replace") for path in log_paths]
    require_finished(texts[0], log_paths[0])
    return texts


def wait_all_or_first_failure(processes, poll_seconds=0.5):
    """Waits for every process; on the first non-zero exit stops the rest and returns its index."""
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = next((i for i, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None or all(code == 0 for code in codes):
                break
            time.sleep(poll_seconds)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait()
    return failed


@dataclass(frozen=True)
class DecodeResult:
    cer: float
    wer: float
    hypotheses: int
    fairseq_score: float
    """What fairseq-generate itself printed (a CER when char_level, else a WER)."""
    results_file: Path


SINGLE_LANGUAGE_TASK = ("--task", PLUGIN_FINETUNING_TASK)


def generate(data_dir, checkpoint, subset, results_dir, char_level=True, extra_args=(), threads=None,
             task_args=SINGLE_LANGUAGE_TASK, cpu=True):
    """Decodes `subset` of `data_dir` with stock `fairseq-generate` and scores it (`task_args`: the
    task and its options, e.g. the multilingual task with `--decode-language`); on the GPU that
    fairseq finds unless `cpu`."""
    results_dir = Path(results_dir)
    command = [
        fairseq_command("fairseq-generate"), os.path.abspath(data_dir),
        "--user-dir", USER_DIR, *task_args, "--labels", "ltr",
        "--path", os.path.abspath(checkpoint), "--gen-subset", subset,
        *(["--cpu"] if cpu else []), "--max-tokens", str(DECODE_MAX_TOKENS), "--required-batch-size-multiple", "1",
        "--post-process", "letter", "--scoring", "wer", "--results-path", results_dir,
    ]
    if char_level:
        command.append("--wer-char-level")
    run_logged(command + list(extra_args), results_dir / f"generate-{subset}.log", env=thread_env(threads))
    results_file = results_dir / f"generate-{subset}.txt"
    references, hypotheses, fairseq_score = read_generate_output(results_file.read_text())
    if not hypotheses:
        raise RunError(f"fairseq-generate decoded nothing; see {results_file}")
    rates = error_rates((references[i], hypotheses[i]) for i in sorted(hypotheses))
    return DecodeResult(rates.cer, rates.wer, len(hypotheses), fairseq_score, results_file)


def read_generate_output(text):
    """Reference (T-) and detokenized hypothesis (D-) lines by utterance id, and fairseq's score."""
    references, hypotheses = {}, {}
    for line in text.splitlines():
        kind, _, rest = line.partition("-")
        if kind not in ("T", "D") or "\t" not in rest:
            continue
        fields = rest.split("\t")
        if kind == "T":
            references[int(fields[0])] = fields[1]
        else:
            hypotheses[int(fields[0])] = fields[2] if len(fields) > 2 else ""
    match = re.search(r"WER: ([0-9.]+)", text)
    return references, hypotheses, float(match.group(1)) if match else float("nan")
