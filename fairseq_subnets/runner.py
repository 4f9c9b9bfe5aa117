"""Runs the stock fairseq entry points as subprocesses and reads their results.

Everything we train or decode goes through `fairseq-hydra-train` and `fairseq-generate` exactly as a
user would run them; this module only builds their command lines, keeps their logs, and refuses to
call a run successful when fairseq exited 0 having trained or decoded nothing.
"""
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import USER_DIR
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


def run_logged(command, log_path, env=None):
    """Runs `command`, writing stdout and stderr to `log_path`; raises RunError on failure."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(map(str, command)) + "\n")
        log.flush()
        status = subprocess.run(
            [str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, env=env
        ).returncode
    text = log_path.read_text(errors="replace")
    if status != 0:
        raise RunError(f"{command[0]} exited with {status}; log {log_path}:\n{tail(text)}")
    return text


def tail(text, lines=LOG_TAIL_LINES):
    return "\n".join(text.splitlines()[-lines:])


def hydra_train(config_name, overrides, log_path, config_dir=CONFIG_DIR / "finetune"):
    """`fairseq-hydra-train --config-dir DIR --config-name NAME overrides...`.

    Paths in overrides must be absolute (Hydra changes the working directory). Returns the log text.
    """
    command = [fairseq_command("fairseq-hydra-train"), "--config-dir", config_dir, "--config-name", config_name]
    text = run_logged(command + list(overrides), log_path)
    if "done training" not in text:
        raise RunError(f"fairseq-hydra-train exited 0 without finishing training; log {log_path}:\n{tail(text)}")
    return text


@dataclass(frozen=True)
class DecodeResult:
    cer: float
    wer: float
    hypotheses: int
    fairseq_score: float
    """What fairseq-generate itself printed (a CER when char_level, else a WER)."""
    results_file: Path


def generate(data_dir, checkpoint, subset, results_dir, char_level=True, extra_args=()):
    """Decodes `subset` of `data_dir` with stock `fairseq-generate` and scores it."""
    results_dir = Path(results_dir)
    command = [
        fairseq_command("fairseq-generate"), os.path.abspath(data_dir),
        "--user-dir", USER_DIR, "--task", "subnets_audio_finetuning", "--labels", "ltr",
        "--path", os.path.abspath(checkpoint), "--gen-subset", subset,
        "--cpu", "--max-tokens", str(DECODE_MAX_TOKENS), "--required-batch-size-multiple", "1",
        "--post-process", "letter", "--scoring", "wer", "--results-path", results_dir,
    ]
    if char_level:
        command.append("--wer-char-level")
    run_logged(command + list(extra_args), results_dir / f"generate-{subset}.log")
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
