"""Start-up time of the `fairseq-subnets` command: `fairseq-subnets --help` as a user runs it (the
console script installed beside this interpreter, a fresh process each round), against the named
reference `python -c pass` of the same interpreter, measured in the same run.

Every command builds the whole parser before it does anything, so this time is also what each
group's `--help` and each argument error costs. A person waits for it, so the target is a wall
time (TARGET_SECONDS); the ratio to the bare interpreter says how much the package's own imports
add, which holds on another machine. Standard library only: the benchmark must not load what the
command is meant to avoid.
"""
import datetime
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Sequence

from .timing import compare, interleaved, machine_description, ratio_cell, text_table

REFERENCE = "python -c pass"
HELP = "fairseq-subnets --help"
TARGET_SECONDS = 0.5
"""Most wall time `fairseq-subnets --help` may take: an answer that feels immediate."""


def console_script() -> Path:
    """The `fairseq-subnets` script that installing the package put beside this interpreter."""
    return Path(sys.executable).with_name("fairseq-subnets")


@dataclass(frozen=True)
class CliBenchSettings:
    """How often each command starts."""

    steps: int = 20
    warmup: int = 2

    def check(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be at least 0, got {self.warmup}")
        if not console_script().is_file():
            raise ValueError(f"{console_script()}: no fairseq-subnets console script beside {sys.executable}; "
                             "install the package into this interpreter (pip install -e .)")


def _start(command: Sequence[str]) -> Callable[[], None]:
    """A function that runs `command` to its end, its output discarded; a failure is a RuntimeError."""
    def run() -> None:
        finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if finished.returncode != 0:
            last_line = (finished.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"`{' '.join(command)}` exited with status {finished.returncode}: {last_line}")
    return run


def run_cli_benchmark(settings: CliBenchSettings = CliBenchSettings(),
                      say: Callable[[str], None] = print) -> Dict[str, object]:
    """Times the reference and `--help` in turn; the result holds both medians and their ratio."""
    settings.check()
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_description(f"python {platform.python_version()}"),
              "settings": asdict(settings), "console_script": str(console_script()), "target_s": TARGET_SECONDS}
    say(f"timing: {settings.warmup} warm-up + {settings.steps} timed starts of each, interleaved ...")
    seconds = interleaved({REFERENCE: _start([sys.executable, "-c", "pass"]),
                           HELP: _start([str(console_script()), "--help"])}, settings.steps, settings.warmup)
    result["help"] = compare(seconds, REFERENCE, HELP)
    result["help_within_target"] = result["help"]["measured_median_s"] <= TARGET_SECONDS
    return result


def format_cli_report(result: Mapping[str, object]) -> str:
    """The benchmark as a plain-text table: both medians, their ratio, and the wall-time target."""
    row = result["help"]
    verdict = "met" if result["help_within_target"] else "MISSED"
    rows = [("command", "median (s)", f"ratio to {REFERENCE} [per-round range]", "target"),
            (REFERENCE, f"{row['reference_median_s']:.3f}", "1.000x", "reference"),
            (HELP, f"{row['measured_median_s']:.3f}", ratio_cell(row, "information"),
             f"<= {result['target_s']:.2f} s: {verdict}")]
    settings = result["settings"]
    lines = [f"{result['date']}  {result['machine']}",
             f"{result['console_script']}; wall-time medians of {settings['steps']} starts after "
             f"{settings['warmup']} warm-up"]
    return "\n".join(lines + text_table(rows))
