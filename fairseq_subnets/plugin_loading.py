"""Registering the fairseq components whichever of fairseq and fairseq_subnets is imported first.

fairseq loads a user dir (`--user-dir`, `common.user_dir`, `utils.import_user_module`) by
importing the package, but only if no module of that name is imported yet: otherwise it logs
"already imported" and does nothing. So a notebook that imports fairseq_subnets (for the mask
core, say) before fairseq would never register `subnets_*` nor allow-list the checkpoint classes,
and loading a plugin checkpoint would fail. The package therefore registers itself:

- fairseq already imported: import `fairseq_subnets.plugin` at once;
- fairseq not imported yet: import nothing heavy now (the core and the data tools must stay usable
  without fairseq and torch), but put a one-shot finder on `sys.meta_path` that lets the import of
  the `fairseq` package run as usual and imports `fairseq_subnets.plugin` right after it finishes,
  then leaves `sys.meta_path`.

A module body runs once per process, so the components are registered once however many of these
paths run (fairseq raises on a second registration of a name).
"""
import importlib
import importlib.abc
import importlib.util
import sys

PLUGIN_MODULE = __package__ + ".plugin"


def register_now_or_after_fairseq() -> None:
    """Registers the plugin now if fairseq is imported, else right after fairseq's import."""
    if "fairseq" in sys.modules:
        importlib.import_module(PLUGIN_MODULE)
    elif not any(isinstance(finder, _RegisterAfterFairseq) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterFairseq())


class _RegisterAfterFairseq(importlib.abc.MetaPathFinder):
    """Finds `fairseq` through the other finders and wraps its loader; ignores every other name."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "fairseq":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ImportPluginAfter(spec.loader)
        return spec


class _ImportPluginAfter(importlib.abc.Loader):
    """Runs fairseq's own loader, puts it back on the module (so fairseq sees its usual loader),
    then imports the plugin."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        importlib.import_module(PLUGIN_MODULE)
