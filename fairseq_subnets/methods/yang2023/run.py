"""Running a Yang et al. (2023) grid: the corpus, then every cell through the engine.

Results, rewritten after every finished cell: `results.csv` / `results.json` (the engine's schema
with this method's columns: one row per model and language, finished or not), `masks.csv` (the
IOU of every pair of language masks and the union ratio of each set: Fig. 3) and
`layer_sparsity.csv` (each language mask's sparsity per encoder layer).
"""
from dataclasses import asdict
from pathlib import Path

from ...engine.results import write_csv, write_results
from ..storey2025.run import GridRun as CorpusGridRun
from .cells import LAYER_COLUMNS, MASK_COLUMNS, RESULT_COLUMNS, GridPlan
from .spec import METHOD

MASKS_FILE = "masks.csv"
LAYERS_FILE = "layer_sparsity.csv"


class GridRun(CorpusGridRun):
    """One grid into `out_dir`; `executor` (default: one local thread) runs the cells. Synthesizing
    the corpus and running the cells is storey2025's GridRun; the cells and the results files are
    this method's."""

    plan = GridPlan

    def write_results(self) -> Path:
        analysed = [self.results[cell.name] for cell in self.cells
                    if cell.name in self.results and "mask_rows" in self.results[cell.name]]
        write_csv(self.out_dir / MASKS_FILE, MASK_COLUMNS, [row for result in analysed for row in result["mask_rows"]])
        write_csv(self.out_dir / LAYERS_FILE, LAYER_COLUMNS,
                  [row for result in analysed for row in result["layer_rows"]])
        extra = {"method": METHOD, "grid": str(Path(self.spec.path).resolve()), "grid_spec": asdict(self.spec)}
        return write_results(self.out_dir, self.cells, self.results, RESULT_COLUMNS, extra)
