"""S3-Router: finetuning via subnetwork routing (Fu et al. 2022) as a method of the experiment engine.

- `spec.py`: the grid file (reading, complete validation) and the S3-Router runs it expands to;
- `cells.py`: the engine cells (pretraining, weight fine-tuning, learned masks, S3-Router-P and
  global L1, the bundle and decoding from it, mask similarity) and their work;
- `run.py`: running a grid and writing results.csv, results.json, similarity.csv and correlation.csv;
- `views.py`: the paper's figures and tables in miniature from those files.

What the CLI uses (the method interface of fairseq_subnets/methods/README.md) is imported here.
"""
from collections import Counter
from pathlib import Path

from .run import GridRun
from .spec import METHOD, GridError, load_grid

NAME = METHOD


def dry_run_lines(spec):
    """What `fairseq-subnets grid --dry-run` prints: every cell (planning writes nothing), then how
    many results rows of each method and how many other cells (pretraining, pruning, bundle, similarity)."""
    cells = GridRun(spec, Path("runs") / spec.name).cells
    rows = Counter(cell.row["method"] for cell in cells if cell.row is not None)
    counts = ", ".join(f"{count} {method}" for method, count in rows.items())
    return [cell.name for cell in cells] + [f"{len(cells)} cells: {counts}, {len(cells) - sum(rows.values())} other"]


def write_report(results, out_dir):
    """The views of views.py (imported here, when called: matplotlib stays out of other commands)."""
    from .views import write_report as write_views_report

    return write_views_report(results, out_dir)


__all__ = ["NAME", "GridError", "GridRun", "dry_run_lines", "load_grid", "write_report"]
