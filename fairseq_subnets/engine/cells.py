"""Cells: named units of work with their input files and dependencies.

A method describes its experiment as a list of cells (train this, prune that, decode this); the
engine runs them in dependency order, in parallel, on this machine or through a job system, and
skips the ones already done. The engine never looks inside the results: what a cell means is the
method's business.

Cache key. A cell's key is derived from what its work really receives, never restated beside it:
(1) the work itself, a function and the arguments a functools.partial binds to it; (2) the content
of every config file a HydraConfig among those arguments is built from (engine/hydra_configs.py),
so editing a shipped yaml reruns exactly the cells training with it; (3) the content digest of each
file in `inputs` (manifests, a given checkpoint, a mask file written by an earlier cell: see
`digests.file_digest`), taken when the cell is about to run, after its dependencies finished;
(4) the keys of the cells in `after`; and (5) the package version, since the code the work runs is
part of what it produces. A change anywhere upstream therefore changes the key of every cell built
on it, and a rebuilt dependency whose output file is byte-identical (a deterministic pruning)
leaves cells that read only that file untouched.
"""
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePath
from typing import Callable, Dict, List, Optional, Sequence

from .digests import file_digest, value_digest
from .hydra_configs import ConfigFileError, HydraConfig


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
    runner: object
    """What runs the cell's fairseq commands (engine/runners.py's FairseqRunner, or a test's stand-in)."""


@dataclass
class Cell:
    name: str
    """Unique within a run; names the cell in logs, progress and the results table."""
    directory: Path
    """The cell's own folder: its bookkeeping (cell.json, result.json) and whatever it writes."""
    work: Callable[[CellContext], dict]
    """Does the work and returns the result (JSON-serialisable). It runs in another process under
    submitit, so it must pickle: a module-level function or a functools.partial of one, whose bound
    arguments are everything besides the context that it depends on (they make the cache key)."""
    inputs: Sequence[Path] = ()
    after: Sequence[str] = ()
    row: Optional[dict] = None
    """The cell's line in results.csv while it has no result; None keeps it out of the table."""
    ranks: int = 1
    """Processes of its training run (fairseq's world size); a GPU executor gives it GPUs per rank."""
    shared: bool = False
    """Its folder is shared with other grids (engine/grid_plan.py): a run holds its lock while the
    cell runs (engine/folder_locks.py)."""


def work_description(work) -> dict:
    """The function a cell's work calls and the arguments bound to it, as plain JSON values."""
    if isinstance(work, partial):
        inner = work_description(work.func)
        bound = {"args": [*inner.get("args", []), *work.args], "keywords": {**inner.get("keywords", {}),
                                                                          **work.keywords}}
        return json.loads(json.dumps({**inner, **bound}, default=_plain))
    return {"function": f"{work.__module__}.{work.__qualname__}"}


def _plain(value):
    """JSON for the values json cannot write itself; anything else (an object whose text may hold
    its address) would give a key that changes from run to run, so it is refused."""
    if isinstance(value, HydraConfig):
        return {"config_name": value.name, "config_dir": str(value.directory)}
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"a {type(value).__name__} bound to the work cannot be digested (bind plain values: "
                    "numbers, strings, paths, lists, mappings, a HydraConfig)")


def bound_values(value, kind) -> list:
    """Every value of type `kind` bound to a cell's work (through partials, lists, tuples and the
    values of mappings), in order."""
    if isinstance(value, partial):
        return bound_values([value.func, *value.args, *value.keywords.values()], kind)
    if isinstance(value, kind):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [found for item in value for found in bound_values(item, kind)]
    return []


def hydra_configs(value) -> List[HydraConfig]:
    """Every HydraConfig bound to a cell's work, in order."""
    return bound_values(value, HydraConfig)


def package_version() -> str:
    """fairseq_subnets.__version__, read at each call rather than copied at import, so that a version
    changed in this process (as the cache tests do) is the one digested."""
    import fairseq_subnets

    return fairseq_subnets.__version__


def cell_key(cell: Cell, dependency_keys: Dict[str, str]):
    """(key, the parts it digests): see the module docstring."""
    configs = {}
    try:
        for config in hydra_configs(cell.work):
            configs.update({str(path): file_digest(path) for path in config.files()})
    except ConfigFileError as error:
        raise CellError(f"cell {cell.name}: {error}") from None
    inputs = {}
    for path in cell.inputs:
        try:
            inputs[str(path)] = file_digest(path)
        except FileNotFoundError:
            raise CellError(f"cell {cell.name}: input file {path} does not exist") from None
    try:
        work = work_description(cell.work)
    except TypeError as error:
        raise CellError(f"cell {cell.name}: {error}") from None
    parts = {"work": work, "configs": configs, "inputs": inputs,
             "after": {name: dependency_keys[name] for name in cell.after}, "version": package_version()}
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
