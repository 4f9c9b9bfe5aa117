"""Language-specific subnetworks (Storey, Harte & Bell 2025) as an experiment on the engine.

- `spec.py`: the grid file (reading, complete validation) and the downstream cells it expands to;
- `cells.py`: the engine cells (pretraining, upstream fine-tuning, pruning to masks, IOU,
  downstream fine-tuning and decoding) and their work, the run writing results.csv, results.json
  and iou.csv, and the slice of the grid that `fairseq-subnets demo` runs;
- `views.py`: the paper's tables and figures from those files.

What the CLI uses (the experiment interface of fairseq_subnets/experiments/README.md) is imported here.
"""
from .cells import GridRun
from .spec import METHOD, GridError, load_grid, plan_cells

NAME = METHOD


def dry_run_lines(spec):
    """What `fairseq-subnets grid --dry-run` prints: every downstream cell, then the counts."""
    cells = plan_cells(spec)
    return [cell.name for cell in cells] + [
        f"{len(spec.upstream.languages) * len(spec.seeds)} upstream models, {len(cells)} downstream cells"]


def write_report(results, out_dir):
    """The views of views.py (imported here, when called: matplotlib stays out of other commands)."""
    from .views import write_report as write_views_report

    return write_views_report(results, out_dir)


__all__ = ["NAME", "GridError", "GridRun", "dry_run_lines", "load_grid", "write_report"]
