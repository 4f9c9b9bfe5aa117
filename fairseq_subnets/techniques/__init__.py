"""The techniques `subnets_wav2vec_ctc` hosts, one folder each, registered by one line in BUILT_IN.

Each folder's package exposes `TECHNIQUE`, a `techniques.extension.Technique` subclass: its config
keys, checks, declared conflicts and hooks. The order of BUILT_IN is the order in which the host
calls the hooks at build time (fixed masks before the techniques that build on the weights they
leave), so a new technique usually goes last.

A technique outside this package (a user's own, or a test's) is registered without editing
anything here: name it in the environment variable FAIRSEQ_SUBNETS_TECHNIQUES, comma-separated,
each a module path importable by the fairseq process or, as fairseq's own `--user-dir` takes a
folder, the path of a Python file. It must be set before fairseq loads the plugin, since fairseq
registers the model's config at that moment.

A technique module imports no fairseq at module level (only inside its hooks): the plugin is
registered right after fairseq's import and reads this registry then, so a technique module that
imported fairseq first would be read half-built.
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Tuple

BUILT_IN = (
    "fixed_masks",
    "pathways",
    "language_heads",
    "learned_masks",
    "tuners",
    "iterative_pruning",
    "sparse_decoding",
)
EXTRA_TECHNIQUES_VARIABLE = "FAIRSEQ_SUBNETS_TECHNIQUES"


def technique_modules() -> Tuple[str, ...]:
    """Module paths of every registered technique: the built-in ones, then the extra ones."""
    extra = [name.strip() for name in os.environ.get(EXTRA_TECHNIQUES_VARIABLE, "").split(",") if name.strip()]
    return tuple(f"{__name__}.{name}" for name in BUILT_IN) + tuple(extra)


def import_technique_module(name: str):
    """A technique module by module path, or by file path (`*.py`, imported once per process)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = Path(name).resolve()
    module_name = f"{__name__}.user_file_{path.stem}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or not path.is_file():
            raise ImportError(f"{EXTRA_TECHNIQUES_VARIABLE} names {name}, which is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


def registered_techniques() -> Tuple[type, ...]:
    """The Technique classes, in registry order; a module without TECHNIQUE is refused by name."""
    techniques = []
    for module_name in technique_modules():
        module = import_technique_module(module_name)
        technique = getattr(module, "TECHNIQUE", None)
        if technique is None:
            raise ImportError(f"{module_name} (listed in {EXTRA_TECHNIQUES_VARIABLE} or BUILT_IN) has no TECHNIQUE")
        techniques.append(technique)
    names = [technique.name for technique in techniques]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ImportError(f"technique name(s) registered twice: {', '.join(repeated)}")
    return tuple(techniques)
