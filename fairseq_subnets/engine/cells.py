"""Cells: named units of work with declared configuration, input files and dependencies.

A method describes its experiment as a list of cells (train this, prune that, decode this); the
engine runs them in dependency order, in parallel, on this machine or through a job system, and
skips the ones already done. The engine never looks inside `config` or the results: what a cell
means is the method's business.

Cache key. A cell's key is the digest of (1) its `config`, every setting that changes what it
produces, (2) the content digest of each file in `inputs` (manifests, a given checkpoint, a mask
file written by an earlier cell: see `digests.file_digest`), taken when the cell is about to run,
after its dependencies finished, and (3) the keys of the cells in `after`. A change anywhere
upstream therefore changes the key of every cell built on it, and a rebuilt dependency whose output
file is byte-identical (a deterministic pruning) leaves cells that read only that file untouched.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .digests import file_digest, value_digest


class CellError(ValueError):
    """The cells themselves are inconsistent (a duplicate name, an unknown dependency, a cycle, a
    missing input file); the message names the cell."""


@dataclass(frozen=True)
class CellContext:
    """What a cell's work gets, wherever it runs (a thread here, a local process, a Slurm job)."""
    directory: Path
    results: Dict[str, dict]
    """The results of the cells named in `after`, by name."""
    threads: Optional[int]
    """CPU threads the cell may use (None: every core it can see)."""
    gpus: int
    """GPUs given to the cell; 0 means its training runs on CPU ranks."""


@dataclass
class Cell:
    name: str
    """Unique within a run; names the cell in logs, progress and the results table."""
    directory: Path
    """The cell's own folder: its bookkeeping (cell.json, result.json) and whatever it writes."""
    work: Callable[[CellContext], dict]
    """Does the work and returns the result (JSON-serialisable). It runs in another process under
    submitit, so it must pickle: a module-level function or a functools.partial of one."""
    config: dict = field(default_factory=dict)
    inputs: Sequence[Path] = ()
    after: Sequence[str] = ()
    row: Optional[dict] = None
    """The cell's line in results.csv while it has no result; None keeps it out of the table."""
    ranks: int = 1
    """Processes of its training run (fairseq's world size); a GPU executor gives it GPUs per rank."""


def cell_key(cell: Cell, dependency_keys: Dict[str, str]):
    """(key, the parts it digests): see the module docstring."""
    inputs = {}
    for path in cell.inputs:
        try:
            inputs[str(path)] = file_digest(path)
        except FileNotFoundError:
            raise CellError(f"cell {cell.name}: input file {path} does not exist") from None
    parts = {"config": cell.config, "inputs": inputs, "after": {name: dependency_keys[name] for name in cell.after}}
    return value_digest(parts), parts


def check_cells(cells: Sequence[Cell]) -> List[Cell]:
    """The cells in an order where every cell comes after its dependencies (otherwise in the
    given order); raises CellError before anything runs if names, folders or dependencies clash."""
    by_name: Dict[str, Cell] = {}
    for cell in cells:
        if cell.name in by_name:
            raise CellError(f"cell {cell.name}: the name is used twice")
        by_name[cell.name] = cell
    folders = {Path(cell.directory).resolve(): cell.name for cell in cells}
    if len(folders) < len(cells):
        raise CellError("two cells share a folder")
    for folder, name in folders.items():
        enclosing = next((folders[parent] for parent in folder.parents if parent in folders), None)
        if enclosing is not None:
            raise CellError(f"cell {name}: its folder {folder} is inside the folder of cell {enclosing}")
    for cell in cells:
        unknown = [name for name in cell.after if name not in by_name]
        if unknown:
            raise CellError(f"cell {cell.name}: depends on unknown cell {unknown[0]}")
    ordered, placed, visiting = [], set(), []

    def place(cell):
        if cell.name in placed:
            return
        if cell.name in visiting:
            cycle = visiting[visiting.index(cell.name):] + [cell.name]
            raise CellError(f"cell {cell.name}: dependency cycle {' -> '.join(cycle)}")
        visiting.append(cell.name)
        for name in cell.after:
            place(by_name[name])
        visiting.pop()
        placed.add(cell.name)
        ordered.append(cell)

    for cell in cells:
        place(cell)
    return ordered
