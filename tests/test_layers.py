"""The package's layers, read off its import statements and its imports at run time.

Each top-level module or package of fairseq_subnets sits in one layer and imports only from lower
layers (or from itself): never sideways into another module of its layer, never upwards. Inside
`techniques/` a technique's folder imports no other technique's folder (only the shared interface
modules), a tuner method's folder no other method's, and inside `experiments/` a paper's folder
imports no other paper's folder: each is meant to be added or removed alone. And every module that claims to work without fairseq (the
pure-torch core, the data tools, the techniques, which import fairseq inside their hooks only) is
imported without fairseq being imported."""
import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import fairseq_subnets

PACKAGE_DIR = Path(fairseq_subnets.__file__).parent
LAYERS = (
    ("atomic", "errors", "scoring", "plugin_loading"),
    ("(package)",),
    ("core", "data"),
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
"""Packages whose every module imports without fairseq (pkgutil finds them all)."""


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


def test_no_technique_folder_imports_another():
    assert not sibling_imports("techniques", shared=("extension", "mask_files", "language_entries"))


def test_no_tuner_method_folder_imports_another():
    """Each method is one folder under techniques/tuners, added or removed alone; what the methods
    share is in the package's own modules."""
    shared = {path.stem for path in (PACKAGE_DIR / "techniques" / "tuners").glob("*.py")}
    assert {"base", "registry"} <= shared and not sibling_imports("techniques.tuners", shared=tuple(shared))


def test_no_paper_folder_imports_another():
    paper_folders = [path.name for path in (PACKAGE_DIR / "experiments").iterdir() if (path / "__init__.py").exists()]
    shared = {path.stem for path in (PACKAGE_DIR / "experiments").glob("*.py")}
    assert paper_folders and not sibling_imports("experiments", shared=tuple(shared))


def test_the_modules_that_claim_it_import_without_fairseq():
    names = [info.name for top in WITHOUT_FAIRSEQ
             for info in pkgutil.walk_packages([str(PACKAGE_DIR / top)], prefix=f"fairseq_subnets.{top}.")]
    names = [f"fairseq_subnets.{top}" for top in WITHOUT_FAIRSEQ] + names
    assert len(names) > 30  # pkgutil found the folders' modules, not an empty list
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    importlib.import_module(name)\n"
              "    if 'fairseq' in sys.modules:\n"
              "        sys.exit('importing ' + name + ' imported fairseq')\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
