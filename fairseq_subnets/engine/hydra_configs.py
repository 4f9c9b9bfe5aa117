"""A training cell's Hydra config, and every file it is made of.

A cell that trains names its config as a HydraConfig among the arguments of its work; the work hands
it to `runner.hydra_train`, and the cache key digests the content of every file the config is
built from (the named yaml and, through its `defaults:` list, every yaml it pulls in), so editing a
shipped config reruns exactly the cells that train with it.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List

import yaml

SELF = "_self_"


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
        found: List[Path] = []
        _collect(self.path, Path(self.directory), found)
        return found


def _collect(path: Path, root: Path, found: List[Path]) -> None:
    if path in found:
        return
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigFileError(f"{path}: cannot read this config ({error})") from None
    found.append(path)
    defaults = content.get("defaults", []) if isinstance(content, dict) else []
    group_dir = path.parent
    for entry in defaults:
        if entry == SELF:
            continue
        if isinstance(entry, str):  # a config of the same group (a primary config's group: the folder)
            _collect(group_dir / f"{entry}.yaml", root, found)
        elif isinstance(entry, dict):  # `group@package: option`, relative to this config's group
            for key, option in entry.items():
                if option is None:
                    continue
                group = key.split()[-1].split("@")[0]  # drop `override`/`optional` and the package
                base = root if group.startswith("/") else group_dir
                _collect(base / group.lstrip("/") / f"{option}.yaml", root, found)
