"""Running a Storey et al. (2025) grid: the corpus, then every cell through the engine.

Results: `results.csv` / `results.json` (the engine's schema with this method's columns: every
planned upstream and downstream cell, finished or not) and `iou.csv` (IOU between the upstream
subnetworks and the base model's at each sparsity), rewritten after every finished cell.
"""
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List

from ...engine.cells import Cell
from ...engine.executors import LocalExecutor
from ...engine.results import write_csv, write_results
from ...engine.scheduler import run_cells
from .cells import IOU_CELL, IOU_COLUMNS, RESULT_COLUMNS, GridPlan
from .spec import METHOD, GridSpec

IOU_FILE = "iou.csv"


class GridRun:
    """One grid into `out_dir`; `executor` (default: one local thread) runs the cells."""

    plan = GridPlan
    """What builds the cells (a method reusing this run class names its own)."""

    def __init__(self, spec: GridSpec, out_dir, executor=None, say=print, progress=None):
        self.spec, self.out_dir = spec, Path(out_dir).resolve()
        self.executor = executor or LocalExecutor(1)
        self.say, self.progress = say, progress
        self.cells: List[Cell] = list(self.plan(spec, self.out_dir, self.corpus_dir()).cells.values())
        self.results: Dict[str, dict] = {}

    def corpus_dir(self) -> Path:
        if self.spec.data is not None:
            return Path(self.spec.data).resolve()
        return self.out_dir / "corpus"

    def synthesize(self) -> None:
        """Builds the corpus of a `corpus:` grid (synthesis skips the utterances already there)."""
        if self.spec.corpus is None:
            return
        from ...data.corpora import corpus_path
        from ...data.synth import synthesize_corpus

        synthesize_corpus(corpus_path(self.spec.corpus), self.corpus_dir(), progress=False,
                          jobs=max(1, self.executor.slots))

    @property
    def rows(self) -> List[dict]:
        """The finished rows of results.csv."""
        return [self.results[cell.name] for cell in self.cells if cell.row is not None and cell.name in self.results]

    def write_results(self) -> Path:
        iou_rows = self.results.get(IOU_CELL, {}).get("iou", [])
        write_csv(self.out_dir / IOU_FILE, IOU_COLUMNS, iou_rows)
        extra = {"method": METHOD, "grid": str(Path(self.spec.path).resolve()), "grid_spec": asdict(self.spec),
                 "iou": iou_rows}
        return write_results(self.out_dir, self.cells, self.results, RESULT_COLUMNS, extra)

    def run(self) -> Path:
        """Runs every unfinished cell; returns results.csv (written even when a cell failed)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.synthesize()
        self.say(f"[grid] corpus: {self.corpus_dir()}")
        self.say(f"[grid] {len(self.cells)} cells, {self.executor.slots} at a time")

        def finished(cell, result):
            self.results[cell.name] = result
            self.write_results()

        try:
            run_cells(self.cells, self.executor, say=self.say, progress=self.progress, on_finished=finished)
        finally:
            self.write_results()
        return self.out_dir / "results.csv"
