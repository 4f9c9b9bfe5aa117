"""S2-LoRA and its comparison set (Liu et al. 2023) as an experiment on the engine.

- `spec.py`: the grid file (reading, complete validation) and the runs it expands to;
- `cells.py`: the engine cells (pretraining, one training run per method, out-of-domain decoding)
  and their work,
  and the run writing results.csv, results.json and ranks.csv;
- `views.py`: the paper's Table 2 and Fig. 3 in miniature from those files.

What the CLI uses (the experiment interface of fairseq_subnets/experiments/README.md) is imported here.
"""
from pathlib import Path

from ...engine.grid_file import GridError
from ...engine.grid_run import planned_cells_lines
from .cells import IN_DOMAIN, OUT_OF_DOMAIN, GridRun
from .spec import METHOD, load_grid

NAME = METHOD
DOMAIN_NAMES = {IN_DOMAIN: "in-domain", OUT_OF_DOMAIN: "out-of-domain"}


def dry_run_lines(spec):
    """What `fairseq-subnets grid --dry-run` prints: every cell (planning writes nothing), then how
    many results rows of each domain and how many other cells (pretraining)."""
    cells = GridRun(spec, Path("runs") / spec.name).cells
    return planned_cells_lines(cells, lambda row: DOMAIN_NAMES[row["domain"]])


def write_report(results, out_dir):
    """The views of views.py (imported here, when called: matplotlib stays out of other commands)."""
    from .views import write_report as write_views_report

    return write_views_report(results, out_dir)


__all__ = ["NAME", "GridError", "GridRun", "dry_run_lines", "load_grid", "write_report"]
