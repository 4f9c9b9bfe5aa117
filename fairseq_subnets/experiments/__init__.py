"""Experiments: one package per paper's reproduction (`experiments/<paper>/`: its grid spec, cells
and views), each running its cells through the engine (fairseq_subnets/engine/), which holds what
every grid shares. README.md in this folder says what an experiment package provides;
`fairseq-subnets grid` and `report` find it here.
"""
import importlib
import json
from pathlib import Path

METHODS = ("storey2025", "fu2022", "liu2023", "yang2023")
RESULTS_JSON = "results.json"
RESULTS_GRID = "grid.yaml"
"""The grid file a results folder may hold beside its results.csv (each shipped example does)."""


class MethodError(ValueError):
    """A grid or results file names no method, or one that does not exist; the message names the file."""


def load_method(name: str, where: str):
    """The package of method `name`; `where` (a file and key) goes into the error."""
    if name not in METHODS:
        raise MethodError(f"{where}: unknown method {name!r} (known: {', '.join(METHODS)})")
    return importlib.import_module(f"{__name__}.{name}")


def method_of_grid_file(path):
    """The experiment package a grid file is for: its `method:` key, which every grid file names
    (a file without it is refused, never read as some default experiment). A file that is not a
    readable YAML mapping raises the engine's GridError naming the file and the line."""
    from ..engine.grid_file import GridError, read_yaml

    raw, lines = read_yaml(str(path))
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the grid file must be a mapping of keys")
    if "method" not in raw:
        raise MethodError(f"{path}: method: missing; name the experiment this grid is for "
                          f"(one of {', '.join(METHODS)})")
    return load_method(str(raw["method"]), f"{path}:{lines['method']}: method")


def method_of_results(results, given: str = None):
    """The method package that wrote RESULTS (a run folder or its results.csv): `given` (the
    report's --method), else the `method` recorded beside the table, in the run's results.json or
    in the grid file `grid.yaml` next to it (a shipped example's folder holds one). Nothing is
    guessed: where nothing names the method, MethodError asks for --method, and a --method that
    contradicts the recorded one is refused."""
    path = Path(results)
    if not path.exists():
        raise MethodError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    recorded, source = recorded_method(folder)
    if given is not None:
        if recorded is not None and recorded != given:
            raise MethodError(f"--method {given}: {source} says the results are {recorded}'s")
        return load_method(given, "--method")
    if recorded is None:
        raise MethodError(f"{path}: nothing names the method that wrote these results (no results.json or grid.yaml "
                          f"with method: beside them); name it with --method (one of {', '.join(METHODS)})")
    return load_method(recorded, f"{source}: method")


def recorded_method(folder: Path):
    """(method, the file naming it) from results.json, else grid.yaml, in `folder`; (None, None)
    when neither names one. A file that exists but cannot be read raises MethodError naming it."""
    from ..engine.grid_file import GridError, read_yaml

    stored, grid = folder / RESULTS_JSON, folder / RESULTS_GRID
    if stored.is_file():
        try:
            recorded = json.loads(stored.read_text())
        except (OSError, ValueError) as error:
            raise MethodError(f"{stored}: unreadable ({error})") from None
        if isinstance(recorded, dict) and "method" in recorded:
            return str(recorded["method"]), stored
    if grid.is_file():
        try:
            raw, lines = read_yaml(str(grid))
        except GridError as error:
            raise MethodError(str(error)) from None
        if isinstance(raw, dict) and "method" in raw:
            return str(raw["method"]), f"{grid}:{lines['method']}"
    return None, None
