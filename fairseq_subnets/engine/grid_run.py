"""Running one grid: its corpus, then every cell through the engine, and its results files.

An experiment's GridRun names its plan (a CorpusPlan subclass), its method, the columns of its
results.csv and its other results files (`side_tables`). The results files hold every finished
cell whatever was interrupted: before anything runs, the results of every cell already finished
with its current key are recorded and the files written, and they are rewritten (atomically)
after every finished cell.
"""
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..tri_stage_phases import empty_decay_phase
from .cells import Cell, bound_values, hydra_configs, package_version
from .digests import file_digest
from .folder_locks import FolderLock
from .grid_file import GridError
from .grid_plan import shared_folder
from .hydra_configs import composed_section
from .executors import LocalExecutor
from .results import RESULTS_CSV, write_csv, write_results
from .scheduler import cached_results, run_cells

SHARED_CORPORA = "corpora"
"""The shared folder's subfolder of synthesized corpora."""
MAX_UPDATE = "optimization.max_update="


def refuse_runs_too_short_for_their_schedule(cells: Sequence[Cell], grid_path) -> None:
    """Refuses, before any cell runs, a training cell whose budget of updates its config's
    tri-stage schedule cannot run (tri_stage_phases): the plugin refuses such a run only when it
    starts, after the corpus synthesis and the pretraining the grid may run first. A cell's budget
    and schedule overrides are what its work is bound to (`optimization.max_update=N`, the last one
    given, and `lr_scheduler.` overrides); a budget computed while the cell runs (storey2025's
    downstream epochs) is checked by the plugin when it starts."""
    for cell in cells:
        overrides = [value for value in bound_values(cell.work, str) if "=" in value]
        budgets = [value[len(MAX_UPDATE):] for value in overrides if value.startswith(MAX_UPDATE)]
        if not budgets or not budgets[-1].isdigit():
            continue
        max_update = int(budgets[-1])
        schedule_overrides = tuple(value for value in overrides if value.lstrip("+~").startswith("lr_scheduler."))
        for config in hydra_configs(cell.work):
            problem = empty_decay_phase(composed_section(config, "lr_scheduler", schedule_overrides), max_update)
            if problem is not None:
                raise GridError(f"{grid_path}: cell {cell.name} trains with {config.name}.yaml for the grid's "
                                f"{max_update} updates: {problem}")


class GridRun:
    """One grid into `out_dir`: `executor` (default: one local thread) runs the cells, `runner`
    (default: the stock fairseq commands, engine/runners.py) runs their fairseq commands,
    `config_root` holds the Hydra configs they train with (default: the shipped ones), and
    `shared_dir` holds what grids share: the synthesized corpus and the pretrain cell, each in a
    folder named by the digest of what makes it (default: none, both are in `out_dir`)."""

    plan = None
    """What builds the cells: a CorpusPlan subclass called with (spec, out_dir, corpus, config_root,
    shared_dir=...)."""
    method: str = ""
    columns: Sequence[str] = ()
    """The columns of results.csv."""

    def __init__(self, spec, out_dir, executor=None, say=print, progress=None, runner=None,
                 config_root: Optional[Path] = None, shared_dir: Optional[Path] = None):
        self.spec, self.out_dir = spec, Path(out_dir).resolve()
        self.shared_dir = Path(shared_dir).resolve() if shared_dir is not None else None
        self.executor = executor or LocalExecutor(1)
        self.say, self.progress, self.runner = say, progress, runner
        self.cells: List[Cell] = list(self.plan(spec, self.out_dir, self.corpus_dir(), config_root,
                                                shared_dir=self.shared_dir).cells.values())
        refuse_runs_too_short_for_their_schedule(self.cells, spec.path)
        self.results: Dict[str, dict] = {}

    def corpus_dir(self) -> Path:
        """`data`, else where the `corpus` is synthesized: in the shared folder, named by the digest
        of its definition file and the package version (so grids on the same definition share it,
        and an edited definition or another release, whose synthesis may differ, gets a new folder
        rather than meeting the old one's utterances), else OUT/corpus."""
        if self.spec.data is not None:
            return Path(self.spec.data).resolve()
        if self.shared_dir is None:
            return self.out_dir / "corpus"
        from ..data.corpora import corpus_path

        definition = corpus_path(self.spec.corpus)
        return shared_folder(self.shared_dir / SHARED_CORPORA, definition.stem,
                             {"definition": file_digest(definition), "package": package_version()})

    def synthesize(self) -> None:
        """Builds the corpus of a `corpus:` grid (synthesis skips the utterances already there, so
        a corpus another grid made is reused as it is); one grid run at a time in a shared one."""
        if self.spec.corpus is None:
            return
        from ..data.corpora import corpus_path
        from ..data.synth import synthesize_corpus

        lock = FolderLock(self.corpus_dir()) if self.shared_dir is not None else None
        if lock is not None and not lock.try_acquire():
            self.say(f"[grid] corpus: waiting for another grid run synthesizing it ({lock.path})")
            lock.acquire()
        try:
            synthesize_corpus(corpus_path(self.spec.corpus), self.corpus_dir(), progress=False,
                              jobs=max(1, self.executor.slots))
        finally:
            if lock is not None:
                lock.release()

    @property
    def rows(self) -> List[dict]:
        """The finished rows of results.csv."""
        return [self.results[cell.name] for cell in self.cells if cell.row is not None and cell.name in self.results]

    def side_tables(self) -> List[Tuple[str, Sequence[str], List[dict]]]:
        """The experiment's results files besides results.csv: (file name, columns, rows)."""
        return []

    def write_results(self) -> Path:
        extra = {"method": self.method, "grid": str(Path(self.spec.path).resolve()), "grid_spec": asdict(self.spec)}
        for name, columns, rows in self.side_tables():
            write_csv(self.out_dir / name, columns, rows)
            extra[Path(name).stem] = rows
        return write_results(self.out_dir, self.cells, self.results, self.columns, extra)

    def run(self) -> Path:
        """Runs every unfinished cell; returns results.csv (written even when a cell failed)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.synthesize()
        self.say(f"[grid] corpus: {self.corpus_dir()}")
        self.say(f"[grid] {len(self.cells)} cells, {self.executor.slots} at a time")
        self.results.update(cached_results(self.cells))
        self.write_results()

        def finished(cell, result):
            self.results[cell.name] = result
            self.write_results()

        try:
            run_cells(self.cells, self.executor, say=self.say, progress=self.progress, on_finished=finished,
                      runner=self.runner)
        finally:
            self.write_results()
        return self.out_dir / RESULTS_CSV


def planned_cells_lines(cells: Sequence[Cell], row_kind: Callable[[dict], str]) -> List[str]:
    """What `fairseq-subnets grid --dry-run` prints for a grid's cells: every cell's name, then how
    many results rows of each kind (`row_kind` of a row) there are and how many other cells."""
    rows = Counter(row_kind(cell.row) for cell in cells if cell.row is not None)
    counts = ", ".join(f"{count} {kind}" for kind, count in rows.items())
    return [cell.name for cell in cells] + [f"{len(cells)} cells: {counts}, {len(cells) - sum(rows.values())} other"]
