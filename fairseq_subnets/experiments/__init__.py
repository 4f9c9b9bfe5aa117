"""Experiments: one package per paper's reproduction (`experiments/<paper>/`: its grid spec, cells
and views), each running its cells through the engine (fairseq_subnets/engine/), which holds what
every grid shares. README.md in this folder says what an experiment package provides;
`fairseq-subnets grid` and `report` find it here.
"""
import importlib
import json
from pathlib import Path

METHODS = ("storey2025", "fu2022", "liu2023", "yang2023")
RESULTS_DEFAULT_METHOD = "storey2025"
"""The method of results without a results.json beside them (the first grids wrote none)."""


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


def method_of_results(results):
    """The method package that wrote RESULTS (a run folder or its results.csv): the `method` of the
    results.json beside it, else RESULTS_DEFAULT_METHOD."""
    path = Path(results)
    stored = (path if path.is_dir() else path.parent) / "results.json"
    try:
        name = json.loads(stored.read_text()).get("method", RESULTS_DEFAULT_METHOD)
    except (OSError, ValueError, AttributeError):
        name = RESULTS_DEFAULT_METHOD
    return load_method(str(name), f"{stored}: method")
