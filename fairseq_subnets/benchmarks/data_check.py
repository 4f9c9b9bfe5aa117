"""Speed of `data check` (`check_manifests`) on a manifest of thousands of files, against the two
named references it sits between, measured in the same run:

* header reads alone: `soundfile.info` on every audio file, the least any audio check must do, so
  the ratio is what the manifest parsing and the checks themselves add;
* decoding every file: `soundfile.read` on every audio file, what a check that looked at the
  samples (or a first epoch of training) would pay.

The check runs when training starts, so it must cost about as much as reading the headers and far
less than decoding. The manifest points every utterance at hard links of one short WAV, which
keeps the folder small while each path is a separate file to open. No torch, like the data tools.
"""
import datetime
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping

import numpy as np
import soundfile

from ..data.audio import SAMPLE_RATE
from ..data.check import check_manifest_dir
from .timing import compare, interleaved, ratio_cell, text_table

CHECK = "data check"
HEADERS = "header reads alone"
DECODING = "decoding every file"
HEADER_TARGET = 1.5
"""Most the check may cost, relative to reading the headers of the same files."""


@dataclass(frozen=True)
class DataCheckBenchSettings:
    """How many utterances the manifest holds, how long each is, and how often to time."""

    files: int = 3000
    seconds: float = 2.0
    """length of each (identical) utterance"""
    steps: int = 5
    warmup: int = 1

    def check(self) -> None:
        for name in ("files", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be at least 0, got {self.warmup}")
        if self.seconds <= 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")


def write_manifest(directory: Path, settings: DataCheckBenchSettings):
    """A correct `train.tsv` whose utterances are hard links of one tone; returns the audio paths."""
    audio = directory / "audio"
    audio.mkdir()
    samples = int(settings.seconds * SAMPLE_RATE)
    source = audio / "source.wav"
    soundfile.write(source, (np.sin(np.arange(samples) / 7.0) * 3000).astype(np.int16), SAMPLE_RATE,
                    subtype="PCM_16")
    paths = [audio / f"{index}.wav" for index in range(settings.files)]
    for path in paths:
        path.hardlink_to(source)
    lines = [f"{audio}\n"] + [f"{path.name}\t{samples}\n" for path in paths]
    (directory / "train.tsv").write_text("".join(lines))
    return paths


def run_data_check_benchmark(settings: DataCheckBenchSettings = DataCheckBenchSettings(),
                             say: Callable[[str], None] = print) -> Dict[str, object]:
    """Times the check and both references, in turn; fails if the check finds a problem."""
    settings.check()
    result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
              "settings": asdict(settings)}
    with tempfile.TemporaryDirectory(prefix="fairseq-subnets-bench-data-") as directory:
        manifest_dir = Path(directory)
        say(f"writing a manifest of {settings.files:,} files of {settings.seconds:g} s ...")
        paths = [str(path) for path in write_manifest(manifest_dir, settings)]
        problems = check_manifest_dir(manifest_dir)
        if problems:
            raise RuntimeError(f"benchmark: the check found problems in a correct manifest: {problems[0]}")
        say(f"timing: {settings.warmup} warm-up + {settings.steps} timed rounds of each, interleaved ...")
        seconds = interleaved({
            CHECK: lambda: check_manifest_dir(manifest_dir),
            HEADERS: lambda: [soundfile.info(path) for path in paths],
            DECODING: lambda: [soundfile.read(path, dtype="int16") for path in paths],
        }, settings.steps, settings.warmup)
    result["against_headers"] = compare(seconds, HEADERS, CHECK)
    result["against_decoding"] = compare(seconds, DECODING, CHECK)
    return result


def format_data_check_report(result: Mapping[str, object]) -> str:
    """The benchmark as a plain-text table (reference, check, ratio and target)."""
    rows = [("reference", "reference (s)", "data check (s)", "ratio [per-round range] (target)")]
    for key, target in (("against_headers", f"<= {HEADER_TARGET:.1f}"), ("against_decoding", "information")):
        row = result[key]
        rows.append((row["reference"], f"{row['reference_median_s']:.3f}", f"{row['measured_median_s']:.3f}",
                     ratio_cell(row, target)))
    settings = result["settings"]
    lines = [f"{result['date']}  {result['machine']}",
             f"{settings['files']:,} files of {settings['seconds']:g} s; medians of {settings['steps']} rounds "
             f"after {settings['warmup']} warm-up"]
    return "\n".join(lines + text_table(rows))
