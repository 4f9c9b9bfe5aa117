"""The results schema of a run: `results.csv` (one row per reported cell, in plan order, its
columns chosen by the method) and `results.json` (the same rows under "cells", beside whatever the
method adds, such as its grid file). A cell without a result keeps its placeholder row: its
coordinates filled in, its measurements empty, never zero. Both files are rewritten atomically
after every finished cell, so a reader never sees half a table.
"""
import csv
import io
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..atomic import write_atomically
from .cells import Cell

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"


def write_csv(path, columns: Sequence[str], rows) -> None:
    """`rows` (mappings) as CSV with exactly `columns`, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue().encode())


def result_rows(cells: Sequence[Cell], results: Dict[str, dict], columns: Sequence[str]):
    """The table's rows: each reported cell's result, or its placeholder row while it has none."""
    return [results.get(cell.name) or {**dict.fromkeys(columns, ""), **cell.row}
            for cell in cells if cell.row is not None]


def write_results(out_dir, cells: Sequence[Cell], results: Dict[str, dict], columns: Sequence[str],
                  extra: Optional[dict] = None) -> Path:
    """Writes OUT/results.csv and OUT/results.json; returns the CSV's path."""
    rows = result_rows(cells, results, columns)
    out_dir = Path(out_dir)
    write_csv(out_dir / RESULTS_CSV, columns, rows)
    write_atomically(out_dir / RESULTS_JSON, json.dumps({**(extra or {}), "cells": rows}, indent=2).encode())
    return out_dir / RESULTS_CSV
