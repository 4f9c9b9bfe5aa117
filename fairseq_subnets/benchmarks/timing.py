"""Timing several runs against a named reference in one process, and the tables the benchmarks print.

Runs take turns (A, B, A, B, ...) so that drift of the machine (another job starting, clock
changes) hits all of them alike, and the first rounds are discarded as warm-up. A result is a
ratio of medians plus the range of the per-round ratios as a noise estimate: a ratio measured in
one run holds on another machine, an absolute time does not. Standard library only, so that
benchmarks of torch-free code stay torch-free.
"""
import importlib.metadata
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Mapping, Sequence


def interleaved(runs: Mapping[str, Callable[[], object]], steps: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per call of each function, calling each once per round, warmup + steps rounds; the
    warm-up rounds are not kept. The order rotates from round to round (A, B, C; B, C, A; C, A, B;
    ...), so that each function takes each place equally often: a function that always ran right
    after another would pay, every round, for whatever that one leaves behind (caches, the
    allocator's state)."""
    seconds: Dict[str, List[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_index in range(warmup + steps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            run = runs[name]
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def compare(seconds: Mapping[str, List[float]], reference: str, measured: str) -> Dict[str, object]:
    """Medians, their ratio (measured / reference) and the range of the per-round ratios."""
    pairs = [b / a for a, b in zip(seconds[reference], seconds[measured])]
    ref_median, ours_median = statistics.median(seconds[reference]), statistics.median(seconds[measured])
    return {"reference": reference, "measured": measured, "reference_median_s": ref_median,
            "measured_median_s": ours_median, "ratio": ours_median / ref_median,
            "pair_ratio_min": min(pairs), "pair_ratio_max": max(pairs),
            "reference_s": list(seconds[reference]), "measured_s": list(seconds[measured])}


def ratio_cell(row: Mapping[str, object], target: str) -> str:
    """A `compare` result as `1.083x [0.916-1.261] (target)`."""
    return f"{row['ratio']:.3f}x [{row['pair_ratio_min']:.3f}-{row['pair_ratio_max']:.3f}] ({target})"


def text_table(rows: Sequence[Sequence[str]]) -> List[str]:
    """Rows of cells as left-aligned text lines, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def machine_description(*details: str) -> str:
    """The machine line of every benchmark report: architecture, CPUs, torch's version (from its
    package metadata, so torch-free benchmarks stay torch-free), the benchmark's own details, and
    the load average, which tells how much other work shared the machine."""
    parts = [platform.machine(), f"{os.cpu_count()} CPUs", f"torch {importlib.metadata.version('torch')}", *details]
    return ", ".join(parts + [f"load average {os.getloadavg()[0]:.2f}"])
