"""Running a Fu et al. (2022) grid: the corpus, then every cell through the engine.

Results, rewritten after every finished cell: `results.csv` / `results.json` (the engine's schema
with this method's columns: every weight fine-tuning, S3-Router, S3-Router-P, global L1 and bundle
decoding cell, finished or not), `similarity.csv` (cosine similarity of the learned masks of each
pair of languages per layer, beside the pair's language similarity) and `correlation.csv` (Pearson
and Spearman between the two, per layer).
"""
from dataclasses import asdict
from pathlib import Path

from ...engine.results import write_csv, write_results
from ..storey2025.run import GridRun as CorpusGridRun
from .cells import CORRELATION_COLUMNS, RESULT_COLUMNS, SIMILARITY_CELL, SIMILARITY_COLUMNS, GridPlan
from .spec import METHOD

SIMILARITY_FILE = "similarity.csv"
CORRELATION_FILE = "correlation.csv"


class GridRun(CorpusGridRun):
    """One grid into `out_dir`; `executor` (default: one local thread) runs the cells. Synthesizing
    the corpus and running the cells is storey2025's GridRun; the cells and the results files are
    this method's."""

    plan = GridPlan

    def write_results(self) -> Path:
        similarity = self.results.get(SIMILARITY_CELL, {})
        pairs, correlations = similarity.get("similarity", []), similarity.get("correlation", [])
        write_csv(self.out_dir / SIMILARITY_FILE, SIMILARITY_COLUMNS, pairs)
        write_csv(self.out_dir / CORRELATION_FILE, CORRELATION_COLUMNS, correlations)
        extra = {"method": METHOD, "grid": str(Path(self.spec.path).resolve()), "grid_spec": asdict(self.spec),
                 "similarity": pairs, "correlation": correlations}
        return write_results(self.out_dir, self.cells, self.results, RESULT_COLUMNS, extra)
