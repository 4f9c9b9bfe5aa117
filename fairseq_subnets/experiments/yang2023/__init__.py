"""ASR Pathways (Yang et al. 2023) as an experiment on the engine: the paper's comparison of
dense multilingual training, language-agnostic pruning (LAP), language-specific pruning by IMP and
LTH (LSP) and multilingual pathways on random, IMP and LTH masks, each with and without group
lasso (Tables 1 and 2), and the overlap of the language masks (Fig. 3).

- `spec.py`: the grid file (reading, complete validation);
- `cells.py`: the engine cells (pretraining, training runs, decoding, mask analysis) and their work,
  and the run writing results.csv, results.json, masks.csv and layer_sparsity.csv;
- `views.py`: Tables 1 and 2 and Fig. 3 in miniature from those files.

What the CLI uses (the experiment interface of fairseq_subnets/experiments/README.md) is imported here.
"""
from pathlib import Path

from ...engine.grid_file import GridError
from ...engine.grid_run import planned_cells_lines
from .cells import GridRun
from .spec import METHOD, load_grid

NAME = METHOD


def dry_run_lines(spec):
    """What `fairseq-subnets grid --dry-run` prints: every cell (planning writes nothing), then how
    many results rows of each model and how many other cells (training, masks, pretraining)."""
    return planned_cells_lines(GridRun(spec, Path("runs") / spec.name).cells, lambda row: row["model"])


def write_report(results, out_dir):
    """The views of views.py (imported here, when called: matplotlib stays out of other commands)."""
    from .views import write_report as write_views_report

    return write_views_report(results, out_dir)


__all__ = ["NAME", "GridError", "GridRun", "dry_run_lines", "load_grid", "write_report"]
