"""The package's layers, read off its import statements and its imports at run time.

Each top-level module or package of fairseq_subnets sits in one layer and imports only from lower
layers (or from itself): never sideways into another module of its layer, never upwards. Inside
`techniques/` a technique's folder imports no other technique's folder (only the shared interface
modules), a tuner method's folder no other method's, and inside `experiments/` a paper's folder
imports no other paper's folder: each is meant to be added or removed alone. Inside `plugin/` the
sub-layers (formats < components < tools) import only downwards. And every module that claims to
work without fairseq (the pure-torch core, the data tools, the techniques, which import fairseq
inside their hooks only, and any module whose docstring says so) is imported without fairseq being
imported."""
import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import fairseq_subnets

PACKAGE_DIR = Path(fairseq_subnets.__file__).parent
LAYERS = (
    ("atomic", "component_names", "errors", "scoring", "plugin_loading"),
    ("(package)",),
    ("core", "data", "tri_stage_phases"),
    ("techniques",),
    ("plugin",),
    ("interop",),
    ("runner",),
    ("demo",),
    ("engine",),
    ("experiments",),
    ("benchmarks",),
    ("cli",),
)
"""Lowest first. "(package)" is fairseq_subnets/__init__.py (USER_DIR, the version)."""
WITHOUT_FAIRSEQ = ("core", "data", "techniques")
"""Packages whose every module imports without fairseq; any other module that claims it in its
docstring is held to it too (pkgutil finds them all)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path):
    """The fairseq_subnets modules `path` imports, as absolute names (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [module_or_package(target, alias.name) for alias in node.names]
            yield from (found for found in names if found.startswith("fairseq_subnets"))
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("fairseq_subnets"))


def module_or_package(package: str, name: str) -> str:
    """`package.name` where `from package import name` imports a module, else `package`."""
    folder = PACKAGE_DIR.parent.joinpath(*package.split("."))
    if (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists():
        return f"{package}.{name}"
    return package


def top_level(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "(package)"


def layer_of(top: str) -> int:
    for index, members in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"fairseq_subnets.{top} is in no layer of tests/test_layers.py: place it")


def package_modules():
    return sorted(path for path in PACKAGE_DIR.rglob("*.py"))


def test_every_module_imports_only_from_lower_layers_or_itself():
    wrong = []
    for path in package_modules():
        source = top_level(module_name(path))
        for target in imported_modules(path):
            destination = top_level(target)
            if destination != source and layer_of(destination) >= layer_of(source):
                wrong.append(f"{module_name(path)} imports {target}")
    assert not wrong, "\n".join(wrong)


def sibling_imports(folder: str, shared=()):
    """Imports from one subpackage of fairseq_subnets.<folder> into another (modules in `shared`
    are the folder's common interface, importable by all)."""
    wrong = []
    prefix = f"fairseq_subnets.{folder}."
    for path in package_modules():
        name = module_name(path)
        if not name.startswith(prefix) or name[len(prefix):].split(".")[0] in shared:
            continue
        own = name[len(prefix):].split(".")[0]
        for target in imported_modules(path):
            if target.startswith(prefix):
                other = target[len(prefix):].split(".")[0]
                if other != own and other not in shared:
                    wrong.append(f"{name} imports {target}")
    return wrong


PLUGIN_SUBLAYERS = ("formats", "components", "tools")
"""The plugin's sub-layers, lowest first: the checkpoint and file formats, the registered fairseq
components, the offline tools behind the CLI. `plugin/__init__.py`, which registers the
components, sits above them all."""
PLUGIN_UPWARD_EXCEPTIONS = {
    ("fairseq_subnets.plugin.formats.bundles", "fairseq_subnets.plugin.components.tasks"):
        "writing a bundle reads the fields of the multilingual task's config; until that comes from "
        "fairseq's task registry, this one import runs upwards (inside the function that writes)",
    ("fairseq_subnets.plugin.formats.checked_checkpoints", "fairseq_subnets.plugin.components.models"):
        "a checkpoint assembled from files is rebuilt as fairseq-generate rebuilds it, without the keys only "
        "training reads, which the model host collects from every technique (inside the function that builds)",
}
"""Known upward imports, each with its reason; the test fails once one of them is gone, so the
list cannot outlive the import."""


def plugin_sublayer(name: str):
    """The plugin sub-layer of a module name (None for the plugin package itself)."""
    parts = name.split(".")
    if parts[:2] != ["fairseq_subnets", "plugin"] or len(parts) == 2:
        return None
    assert parts[2] in PLUGIN_SUBLAYERS, f"{name} is in no plugin sub-layer of tests/test_layers.py: place it"
    return parts[2]


def test_the_plugin_imports_only_downwards_between_its_sub_layers():
    """formats < components < tools: a module imports from its own sub-layer or a lower one, never
    sideways or upwards, so a format never needs a fairseq component and a component never needs a
    CLI tool."""
    wrong, exceptions_seen = [], set()
    for path in package_modules():
        name = module_name(path)
        own = plugin_sublayer(name)
        if own is None:
            continue
        for target in imported_modules(path):
            other = plugin_sublayer(target)
            if other is not None and PLUGIN_SUBLAYERS.index(other) > PLUGIN_SUBLAYERS.index(own):
                if (name, target) in PLUGIN_UPWARD_EXCEPTIONS:
                    exceptions_seen.add((name, target))
                else:
                    wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)
    assert exceptions_seen == set(PLUGIN_UPWARD_EXCEPTIONS), "an upward import listed as an exception is gone"


def test_no_technique_folder_imports_another():
    assert not sibling_imports("techniques", shared=("extension", "mask_files", "language_entries"))


def test_no_tuner_method_folder_imports_another():
    """Each method is one folder under techniques/tuners, added or removed alone; what the methods
    share is in the package's own modules."""
    shared = {path.stem for path in (PACKAGE_DIR / "techniques" / "tuners").glob("*.py")}
    assert {"base", "registry", "peft_form"} <= shared
    assert not sibling_imports("techniques.tuners", shared=tuple(shared))


def test_no_paper_folder_imports_another():
    paper_folders = [path.name for path in (PACKAGE_DIR / "experiments").iterdir() if (path / "__init__.py").exists()]
    shared = {path.stem for path in (PACKAGE_DIR / "experiments").glob("*.py")}
    assert paper_folders and not sibling_imports("experiments", shared=tuple(shared))


CLAIM = re.compile(r"pure[- ]torch|without fairseq|never imports fairseq\b|imports no fairseq\b", re.IGNORECASE)
"""How a module's docstring claims to import without fairseq (a mention of `fairseq_subnets` is no
claim)."""


def all_module_names(path=PACKAGE_DIR, prefix="fairseq_subnets."):
    """Every module and package under `path`, found by pkgutil without importing any of them."""
    for info in pkgutil.iter_modules([str(path)], prefix):
        yield info.name
        if info.ispkg:
            yield from all_module_names(Path(path) / info.name.rsplit(".", 1)[-1], info.name + ".")


def source_of(name: str) -> Path:
    path = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def claims_no_fairseq(name: str) -> bool:
    """In a package that claims it for all its modules, or claiming it in its own docstring."""
    if top_level(name) in WITHOUT_FAIRSEQ:
        return True
    return bool(CLAIM.search(ast.get_docstring(ast.parse(source_of(name).read_text())) or ""))


def test_the_modules_that_claim_it_import_without_fairseq():
    names = ["fairseq_subnets"] + [name for name in all_module_names() if claims_no_fairseq(name)]
    assert {"fairseq_subnets.core.transforms", "fairseq_subnets.core.targets", "fairseq_subnets.core.pruning",
            "fairseq_subnets.core.parametrize", "fairseq_subnets.core.maskfile", "fairseq_subnets.core.stats",
            "fairseq_subnets.techniques.learned_masks.layer", "fairseq_subnets.atomic",
            "fairseq_subnets.benchmarks.prune"} <= set(names)  # pkgutil found them
    assert not any(name.startswith("fairseq_subnets.plugin.") for name in names)
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    importlib.import_module(name)\n"
              "    if 'fairseq' in sys.modules:\n"
              "        sys.exit('importing ' + name + ' imported fairseq')\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
