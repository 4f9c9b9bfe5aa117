"""Experiment methods: one package per method (`methods/<name>/`), each running its cells through
the method-neutral engine (fairseq_subnets/engine/). README.md in this folder says what a method
package provides; `fairseq-subnets grid` and `report` find it here.
"""
import importlib
import json
from pathlib import Path

import yaml

METHODS = ("storey2025", "fu2022", "liu2023", "yang2023")
DEFAULT_METHOD = "storey2025"
"""The method of a grid file without a `method:` key, and of results without a results.json."""


class MethodError(ValueError):
    """A grid or results file names a method that does not exist; the message names the file."""


def load_method(name: str, where: str):
    """The package of method `name`; `where` (a file and key) goes into the error."""
    if name not in METHODS:
        raise MethodError(f"{where}: unknown method {name!r} (known: {', '.join(METHODS)})")
    return importlib.import_module(f"{__name__}.{name}")


def method_of_grid_file(path):
    """The method package a grid file is for (its `method:` key). A file that cannot be read is the
    default method's to report, with its own file and line."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    name = raw.get("method", DEFAULT_METHOD) if isinstance(raw, dict) else DEFAULT_METHOD
    return load_method(str(name), f"{path}: method")


def method_of_results(results):
    """The method package that wrote RESULTS (a run folder or its results.csv): the `method` of the
    results.json beside it, else the default method."""
    path = Path(results)
    stored = (path if path.is_dir() else path.parent) / "results.json"
    try:
        name = json.loads(stored.read_text()).get("method", DEFAULT_METHOD)
    except (OSError, ValueError, AttributeError):
        name = DEFAULT_METHOD
    return load_method(str(name), f"{stored}: method")
