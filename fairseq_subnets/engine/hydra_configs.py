"""A training cell's Hydra config, and every file it is made of.

A cell that trains names its config as a HydraConfig among the arguments of its work; the work hands
it to `runner.hydra_train`, and the cache key digests the content of every file the config is
built from (the named yaml and, through its `defaults:` list, every yaml it pulls in), so editing a
shipped config reruns exactly the cells that train with it.

A group option is looked up as Hydra looks it up: in the config's own folder (fairseq-hydra-train's
`--config-dir`), then in each folder of the primary config's `hydra.searchpath`, in order. That is
how an entry config in config/finetune reaches the configs each technique ships in its own folder
(`pkg://fairseq_subnets.techniques.<technique>.configs`).
"""
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, List, Sequence

import yaml

from .digests import file_digest

SELF = "_self_"
PACKAGE_SCHEME = "pkg://"
FILE_SCHEME = "file://"


class ConfigFileError(ValueError):
    """A config or a file its defaults list names is missing or unreadable; the message names it."""


@dataclass(frozen=True)
class HydraConfig:
    """`--config-dir directory --config-name name` of fairseq-hydra-train."""
    name: str
    directory: Path

    @property
    def path(self) -> Path:
        return Path(self.directory) / f"{self.name}.yaml"

    def files(self) -> List[Path]:
        """The config's yaml and every yaml its defaults lists name, recursively, each once."""
        primary = _read(self.path)
        roots = [Path(self.directory), *search_path_folders(self.path, primary)]
        found: List[Path] = []
        _collect(self.path, primary, Path(), roots, found)
        return found


_composed: Dict[tuple, object] = {}
"""composed_section's results by config, section, overrides and the content of the config's files."""


def composed_section(config: HydraConfig, section: str, overrides: Sequence[str] = ()):
    """`section` of the config as fairseq-hydra-train composes it with `overrides`: Hydra alone,
    without the schema fairseq adds (which checks types and fills in the keys no file sets), so
    fairseq is not imported; None where no file or override sets the section. Hydra reads and
    merges every file of the config, which is slow next to planning a grid, and every grid planned
    in a process asks for the same few compositions, so each is kept for as long as the config's
    files hold what they held (read only, as returned)."""
    from hydra import compose, initialize_config_dir

    contents = tuple((str(path), file_digest(path)) for path in config.files())
    key = (config, section, tuple(overrides), contents)
    if key not in _composed:
        with initialize_config_dir(config_dir=str(Path(config.directory).resolve()), version_base="1.1"):
            _composed[key] = compose(config_name=config.name, overrides=list(overrides)).get(section)
    return _composed[key]


def search_path_folders(path: Path, content) -> List[Path]:
    """The folders of the `hydra.searchpath` of the primary config at `path` (content `content`)."""
    entries = ((content.get("hydra") or {}).get("searchpath") or []) if isinstance(content, dict) else []
    return [_search_path_folder(path, entry) for entry in entries]


def _search_path_folder(path: Path, entry) -> Path:
    if not isinstance(entry, str):
        raise ConfigFileError(f"{path}: hydra.searchpath: {entry!r} is not a string")
    if entry.startswith(PACKAGE_SCHEME):  # as Hydra reads it: the importable package's folder
        module = entry[len(PACKAGE_SCHEME):].replace("/", ".").rstrip(".")
        try:
            return Path(str(resources.files(module)))
        except (ImportError, TypeError, ValueError) as error:
            raise ConfigFileError(f"{path}: hydra.searchpath: cannot find package {module} ({error})") from None
    return Path(entry[len(FILE_SCHEME):] if entry.startswith(FILE_SCHEME) else entry)


def _read(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigFileError(f"{path}: cannot read this config ({error})") from None


def _find(group: Path, option: str, roots: Sequence[Path], named_by: Path) -> Path:
    """The first root's GROUP/OPTION.yaml, as Hydra picks among its search path."""
    for root in roots:
        candidate = root / group / f"{option}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigFileError(f"{named_by}: defaults: {(group / option).as_posix()} is in none of "
                          f"{', '.join(str(root) for root in roots)}")


def _collect(path: Path, content, group: Path, roots: Sequence[Path], found: List[Path]) -> None:
    """Adds `path` (in config group `group`: its folder below a root) and what its defaults name."""
    if path in found:
        return
    found.append(path)
    defaults = content.get("defaults", []) if isinstance(content, dict) else []
    for entry in defaults:
        if entry == SELF:
            continue
        if isinstance(entry, str):  # a config of the same group (a primary config's group: the folder)
            _add(_find(group, entry, roots, path), group, roots, found)
        elif isinstance(entry, dict):  # `group@package: option`, relative to this config's group
            for key, option in entry.items():
                if option is None:
                    continue
                named = key.split()[-1].split("@")[0]  # drop `override`/`optional` and the package
                option_group = Path(named.lstrip("/")) if named.startswith("/") else group / named
                _add(_find(option_group, option, roots, path), option_group, roots, found)


def _add(path: Path, group: Path, roots: Sequence[Path], found: List[Path]) -> None:
    if path not in found:
        _collect(path, _read(path), group, roots, found)
