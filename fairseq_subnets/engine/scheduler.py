"""Runs cells in dependency order, several at a time, skipping the ones already finished.

Bookkeeping per cell folder: `cell.json` holds the cell's key and what it digests (written before
the work starts), `result.json` its result (written atomically after the work succeeded: a cell is
finished exactly when it exists and cell.json holds the current key), `failure.txt` the traceback
of its last failure. A cell whose key changed since its folder was written is started anew from an
empty folder; an unfinished cell with the same key runs its work again in the same folder, so a
training command resumes from its last checkpoint. Caching decisions are made here, in the
submitting process, whatever executor runs the work.
"""
import json
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from ..atomic import write_atomically
from .cells import Cell, CellError, cell_key, check_cells
from .folder_locks import FolderLock

CELL_FILE = "cell.json"
RESULT_FILE = "result.json"
FAILURE_FILE = "failure.txt"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


PART_LABELS = {"work": "work arguments", "configs": "config files", "inputs": "input files",
               "after": "dependencies", "version": "package version"}
"""The parts of a cache key (engine/cells.py), as the log names them when they changed."""


def _changed_parts(stored: dict, parts: dict) -> str:
    changed = [label for name, label in PART_LABELS.items() if stored.get(name) != parts[name]]
    return ", ".join(changed) or "cache key"


def stored_result(cell: Cell, key: str) -> Optional[dict]:
    """The result in the cell's folder when it was computed with this key, else None."""
    stored = _read_json(Path(cell.directory) / CELL_FILE)
    if stored is None or stored.get("key") != key:
        return None
    return _read_json(Path(cell.directory) / RESULT_FILE)


def cached_results(cells: Sequence[Cell]) -> Dict[str, dict]:
    """The results of every cell already finished with its current key, found without running
    anything: keys are computed in dependency order from what is on disk now, and a cell that is
    not finished (or whose inputs are not there yet) makes its dependents unfinished too."""
    results: Dict[str, dict] = {}
    keys: Dict[str, str] = {}
    for cell in check_cells(cells):
        if not all(name in results for name in cell.after):
            continue
        try:
            key, _ = cell_key(cell, keys)
        except CellError:
            continue
        result = stored_result(cell, key)
        if result is not None:
            keys[cell.name], results[cell.name] = key, result
    return results


def prepare(cell: Cell, key: str, parts: dict, say) -> Optional[dict]:
    """The stored result when `cell` is finished with this key; otherwise readies its folder
    (emptied when the key changed) and returns None."""
    directory = Path(cell.directory)
    stored = _read_json(directory / CELL_FILE)
    result_file = directory / RESULT_FILE
    if stored is not None and stored.get("key") == key:
        result = stored_result(cell, key)
        if result is not None:
            return result
    elif stored is not None:
        say(f"[engine] {cell.name}: {_changed_parts(stored, parts)} changed, starting it anew")
        shutil.rmtree(directory)
    elif result_file.exists():
        result_file.unlink()  # a result without the key it was computed for cannot be trusted
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / CELL_FILE, json.dumps({"key": key, **parts}, indent=2, sort_keys=True).encode())
    return None


class CellFailed(RuntimeError):
    """A cell's work raised; `cause` is the original exception, the message names the cell."""

    def __init__(self, cell: Cell, cause: BaseException):
        super().__init__(f"cell {cell.name} failed: {cause}\n(traceback: {Path(cell.directory) / FAILURE_FILE})")
        self.cell, self.cause = cell, cause


class CellBusy(CellFailed):
    """A shared cell's folder is held by another grid run; nothing of this run touched it."""

    def __init__(self, cell: Cell, lock: FolderLock):
        RuntimeError.__init__(self, f"cell {cell.name}: its folder {cell.directory} is in use by another grid run "
                                    f"(lock {lock.path}); run this grid again when that one has finished")
        self.cell, self.cause = cell, None


def run_cells(cells: Sequence[Cell], executor, say: Callable[[str], None] = print, progress=None,
              on_finished: Optional[Callable[[Cell, dict], None]] = None, runner=None) -> Dict[str, dict]:
    """Runs every cell not yet finished, at most `executor.slots` at a time, each once its
    dependencies finished, its fairseq commands through `runner` (default: FairseqRunner, the stock
    commands); returns the results by cell name. `progress.update(1)` and
    `on_finished(cell, result)` follow every finished or skipped cell (from this thread only).

    A failed cell's dependents never start; every other cell still runs, then the first failure is
    raised as CellFailed. Finished cells keep their results.
    """
    ordered = check_cells(cells)
    if runner is None:
        from .runners import FairseqRunner

        runner = FairseqRunner()
    results: Dict[str, dict] = {}
    keys: Dict[str, str] = {}
    waiting = list(ordered)
    running = {}
    blocked = set()
    """Failed cells and the cells that depend on them."""
    failure: Optional[CellFailed] = None
    locks: Dict[str, FolderLock] = {}
    """The locks this run holds, of the shared cells it is running."""

    def finish(cell, result):
        release(cell)
        results[cell.name] = result
        if progress is not None:
            progress.update(1)
        if on_finished is not None:
            on_finished(cell, result)

    def release(cell):
        if cell.name in locks:
            locks.pop(cell.name).release()

    def execute(cell, context_results):
        started = time.monotonic()
        try:
            result = executor.run(cell, context_results, runner)
        except BaseException as error:
            write_atomically(Path(cell.directory) / FAILURE_FILE, traceback.format_exc().encode())
            raise CellFailed(cell, error) from error
        write_atomically(Path(cell.directory) / RESULT_FILE, json.dumps(result, indent=2).encode())
        (Path(cell.directory) / FAILURE_FILE).unlink(missing_ok=True)
        say(f"[engine] {cell.name}: finished in {time.monotonic() - started:.1f} s")
        return result

    with ThreadPoolExecutor(max_workers=executor.slots) as pool:
        while waiting or running:
            for cell in list(waiting):
                if any(name in blocked for name in cell.after):
                    waiting.remove(cell)
                    blocked.add(cell.name)
                    continue
                if len(running) >= executor.slots:
                    break
                if not all(name in results for name in cell.after):
                    continue
                waiting.remove(cell)
                if cell.shared:
                    lock = FolderLock(Path(cell.directory))
                    if not lock.try_acquire():
                        busy = CellBusy(cell, lock)
                        say(f"[engine] {busy}")
                        blocked.add(cell.name)
                        failure = failure or busy
                        continue
                    locks[cell.name] = lock
                keys[cell.name], parts = cell_key(cell, keys)
                stored = prepare(cell, keys[cell.name], parts, say)
                if stored is not None:
                    finish(cell, stored)
                    continue
                say(f"[engine] {cell.name}: started")
                running[pool.submit(execute, cell, {name: results[name] for name in cell.after})] = cell
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell = running.pop(future)
                try:
                    finish(cell, future.result())
                except CellFailed as error:
                    release(cell)
                    say(f"[engine] {error}")
                    blocked.add(cell.name)
                    failure = failure or error
    if failure is not None:
        raise failure
    return results
