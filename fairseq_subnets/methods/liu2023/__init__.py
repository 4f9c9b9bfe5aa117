"""S2-LoRA and its comparison set (Liu et al. 2023) as a method of the experiment engine.

- `spec.py`: the grid file (reading, complete validation) and the runs it expands to;
- `cells.py`: the engine cells (pretraining, one training run per method, out-of-domain decoding)
  and their work;
- `run.py`: running a grid and writing results.csv, results.json and ranks.csv;
- `views.py`: the paper's Table 2 and Fig. 3 in miniature from those files.

What the CLI uses (the method interface of fairseq_subnets/methods/README.md) is imported here.
"""
from collections import Counter
from pathlib import Path

from .cells import IN_DOMAIN, OUT_OF_DOMAIN
from .run import GridRun
from ..storey2025.spec import GridError
from .spec import METHOD, load_grid

NAME = METHOD
DOMAIN_NAMES = {IN_DOMAIN: "in-domain", OUT_OF_DOMAIN: "out-of-domain"}


def dry_run_lines(spec):
    """What `fairseq-subnets grid --dry-run` prints: every cell (planning writes nothing), then how
    many results rows of each domain and how many other cells (pretraining)."""
    cells = GridRun(spec, Path("runs") / spec.name).cells
    rows = Counter(DOMAIN_NAMES[cell.row["domain"]] for cell in cells if cell.row is not None)
    counts = ", ".join(f"{count} {domain}" for domain, count in rows.items())
    return [cell.name for cell in cells] + [f"{len(cells)} cells: {counts}, {len(cells) - sum(rows.values())} other"]


def write_report(results, out_dir):
    """The views of views.py (imported here, when called: matplotlib stays out of other commands)."""
    from .views import write_report as write_views_report

    return write_views_report(results, out_dir)


__all__ = ["NAME", "GridError", "GridRun", "dry_run_lines", "load_grid", "write_report"]
