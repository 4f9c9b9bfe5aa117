"""S3-Router: finetuning via subnetwork routing (Fu et al. 2022) as an experiment on the engine.

- `spec.py`: the grid file (reading, complete validation) and the S3-Router runs it expands to;
- `cells.py`: the engine cells (pretraining, weight fine-tuning, learned masks, S3-Router-P and
  global L1, the bundle and decoding from it, mask similarity) and their work,
  and the run writing results.csv, results.json, similarity.csv and correlation.csv;
- `views.py`: the paper's figures and tables in miniature from those files.

What the CLI uses (the experiment interface of fairseq_subnets/experiments/README.md) is imported here.
"""
from pathlib import Path

from ...engine.grid_run import planned_cells_lines
from .cells import GridRun
from .spec import METHOD, GridError, load_grid

NAME = METHOD


def dry_run_lines(spec):
    """What `fairseq-subnets grid --dry-run` prints: every cell (planning writes nothing), then how
    many results rows of each method and how many other cells (pretraining, pruning, bundle, similarity)."""
    return planned_cells_lines(GridRun(spec, Path("runs") / spec.name).cells, lambda row: row["method"])


def write_report(results, out_dir):
    """The views of views.py (imported here, when called: matplotlib stays out of other commands)."""
    from .views import write_report as write_views_report

    return write_views_report(results, out_dir)


__all__ = ["NAME", "GridError", "GridRun", "dry_run_lines", "load_grid", "write_report"]
