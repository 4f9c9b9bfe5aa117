"""Running a Liu et al. (2023) grid: the corpus, then every cell through the engine.

Results, rewritten after every finished cell: `results.csv` / `results.json` (the engine's schema
with this method's columns: one row per run and evaluation set, finished or not) and `ranks.csv`
(the rank in use of every adapted matrix of each finished run with ranks: one row per run and
encoder layer, a column per matrix kind, empty where the run adapts no such matrix).
"""
from dataclasses import asdict
from pathlib import Path

from ...core.targets import KINDS
from ...engine.results import write_csv, write_results
from ..storey2025.run import GridRun as CorpusGridRun
from .cells import IN_DOMAIN, RESULT_COLUMNS, GridPlan
from .spec import METHOD

RANKS_FILE = "ranks.csv"
RANK_COLUMNS = ("cell", "method", "setting", "layer", *KINDS)


class GridRun(CorpusGridRun):
    """One grid into `out_dir`; `executor` (default: one local thread) runs the cells. Synthesizing
    the corpus and running the cells is storey2025's GridRun; the cells and the results files are
    this method's."""

    plan = GridPlan

    def write_results(self) -> Path:
        ranks = [{"cell": row["cell"], "method": row["method"], "setting": row["setting"], **entry}
                 for row in self.rows if row["domain"] == IN_DOMAIN for entry in row.get("ranks", [])]
        write_csv(self.out_dir / RANKS_FILE, RANK_COLUMNS, ranks)
        extra = {"method": METHOD, "grid": str(Path(self.spec.path).resolve()), "grid_spec": asdict(self.spec)}
        return write_results(self.out_dir, self.cells, self.results, RESULT_COLUMNS, extra)
