"""Grid files, shared by every experiment (fairseq_subnets/experiments/<paper>/spec.py builds on it).

A grid file is checked completely before anything runs, since a cell that fails on a bad setting
does so after the cells before it have trained for minutes. Here is what every grid's check shares:
reading the YAML with the line of every dotted key (a key given twice is refused), sections read
into dataclasses with unknown keys refused (with the closest known one), every key's type and range
from its field's type and metadata, the keys every grid has (`method`, `name`, one of `corpus` and
`data`), Hydra overrides as fairseq-hydra-train will parse them, languages against the corpus or the
manifest folders, and the depth of the encoder the grid starts from. Every error names the file,
the line of the key where it is known, and the dotted key.
"""
import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union, get_args, get_origin

import yaml

from .executors import SlurmOptions, slurm_options

MANIFEST_FILES = ("train.tsv", "train.ltr", "valid.tsv", "valid.ltr", "test.tsv", "test.ltr", "dict.ltr.txt")
"""What a language's manifest folder holds (data/manifests.py writes them)."""
PRETRAIN_CONFIG_NAME = "tiny"
"""The pretraining config (config/pretrain/) of a grid without a `pretrained` checkpoint."""


class GridError(ValueError):
    """The grid file is unusable; the message names the file, the line and the key."""


def at_least(minimum):
    """Field metadata: an integer of at least `minimum`."""
    return {"at_least": minimum}


POSITIVE = {"positive": True}
"""Field metadata: a number above 0."""
NON_EMPTY = {"non_empty": True}
"""Field metadata: a list with at least one entry."""
DISTINCT = {"distinct": True}
"""Field metadata: a list without repeated entries."""
SPARSITIES = {"sparsities": True}
"""Field metadata: a list of fractions of weights pruned, each in [0, 1)."""


@dataclass
class PretrainedModelGrid:
    """The keys of a grid whose cells all start from one pretrained model (given, or pretrained
    by the grid on its corpus) with one seed; an experiment's spec adds its own keys and sections."""
    path: str = ""
    corpus: Optional[str] = None
    data: Optional[str] = None
    pretrained: Optional[str] = None
    pretrain_updates: int = field(default=600, metadata=at_least(1))
    seed: int = 1
    pretrain_seed: Optional[int] = None
    """The seed of the grid's own pretraining (default: `seed`), so that grids with other seeds can
    share one pretrained model."""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """Resources of each cell under `--executor slurm` (see engine/executors.py)."""

    @property
    def pretraining_seed(self) -> int:
        return self.seed if self.pretrain_seed is None else self.pretrain_seed


# ------------------------------------------------------------------------------------ grid file


class GridFile:
    """Where a grid's keys are written: the file and the line of each dotted key, for errors."""

    def __init__(self, path, lines: Optional[Dict[str, int]] = None):
        self.path, self.lines = str(path), lines or {}

    def where(self, key) -> str:
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path

    def error(self, key, problem) -> GridError:
        return GridError(f"{self.where(key)}: {key}: {problem}")


def read_yaml(path: str):
    """The grid file's content and the line of every dotted key, from the YAML node tree, which
    also reveals a key written twice (the loader alone would silently keep the last value)."""
    try:
        with open(path, encoding="utf-8") as handle:
            loader = yaml.SafeLoader(handle.read())
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    except UnicodeDecodeError:
        raise GridError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise GridError(f"{path}: cannot read the grid file ({error.strerror})") from None
    try:
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise GridError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    finally:
        loader.dispose()
    lines: Dict[str, int] = {}

    def note_keys(mapping, prefix):
        for key_node, value_node in mapping.value:
            key, line = f"{prefix}{key_node.value}", key_node.start_mark.line + 1
            if key in lines:
                raise GridError(f"{path}:{line}: {key}: given twice (first on line {lines[key]})")
            lines[key] = line
            if isinstance(value_node, yaml.MappingNode):
                note_keys(value_node, f"{key}.")

    if isinstance(node, yaml.MappingNode):
        note_keys(node, "")
    return raw, lines


def read_section(raw, spec_class, where: str, grid: GridFile):
    """A section's spec from its mapping. An unknown key is refused, with the closest known one: a
    misspelt key would otherwise leave its default in force unnoticed."""
    if raw is None:
        return spec_class()
    if not isinstance(raw, dict):
        raise grid.error(where, f"expected a mapping of keys, got {raw!r}")
    known = [f.name for f in fields(spec_class) if f.name != "path"]
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(known)}"
            raise grid.error(f"{prefix}{key}", f"unknown key ({hint})")
    return spec_class(**raw)


def read_grid(path, spec_class, section_classes: Dict[str, type]):
    """(spec, line of each key) of a grid file: its top-level keys read into `spec_class`, each
    section of `section_classes` into its class, and its `slurm` section; unknown keys, wrong types
    and a bad slurm section are refused naming the file, the line and the key, and so is a file
    without `method:` (what it is for is never guessed). Every experiment's `load_grid` starts
    here, then validates what it read."""
    path = str(path)
    raw, lines = read_yaml(path)
    grid = GridFile(path, lines)
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the grid file must be a mapping of keys")
    if "method" not in raw:
        method = next(f.default for f in fields(spec_class) if f.name == "method")
        raise GridError(f"{path}: method: missing; name the experiment this grid is for (method: {method})")
    sections = {key: raw.pop(key, None) for key in (*section_classes, "slurm")}
    spec = read_section(raw, spec_class, "", grid)
    spec.path = path
    for name, section_class in section_classes.items():
        setattr(spec, name, read_section(sections[name], section_class, name, grid))
    try:
        spec.slurm = slurm_options(sections["slurm"], "slurm")
    except ValueError as error:
        raise GridError(f"{grid.where('slurm')}: {error}") from None
    return spec, lines


# --------------------------------------------------------------------------- types and ranges

_TYPE_NAMES = {str: ("a string", "strings"), int: ("an integer", "integers"), float: ("a number", "numbers")}


def _has_type(value, kind) -> bool:
    """Whether a YAML value has the field type `kind` (bool is no number; an int is a float)."""
    origin, arguments = get_origin(kind), get_args(kind)
    if origin is Union:  # Optional[X]
        return value is None or _has_type(value, arguments[0])
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, arguments[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _has_type(key, arguments[0]) and _has_type(item, arguments[1]) for key, item in value.items())
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _type_name(kind) -> str:
    origin, arguments = get_origin(kind), get_args(kind)
    if origin is Union:
        return _type_name(arguments[0])
    if origin is list:
        return f"a list of {_TYPE_NAMES[arguments[0]][1]}"
    if origin is dict:
        return f"a mapping of {_TYPE_NAMES[arguments[0]][1]} to {_TYPE_NAMES[arguments[1]][1]}"
    return _TYPE_NAMES[kind][0]


def _scalar_types(kind) -> set:
    """The scalar types a field type is made of: Optional[List[str]] -> {str, NoneType}."""
    arguments = get_args(kind)
    return set().union(*map(_scalar_types, arguments)) if arguments else {kind}


def _unquoted_hint(value, kind) -> str:
    """YAML reads bare `no`, `on`, `3` and the like as booleans and numbers, so a language code or
    a layer written bare arrives as another type: say so where a string was wanted."""
    if isinstance(value, dict):
        scalars = [*value, *value.values()]
    else:
        scalars = value if isinstance(value, list) else [value]
    if str in _scalar_types(kind) and any(isinstance(scalar, (bool, int, float)) for scalar in scalars):
        return " (YAML reads bare words such as no or on, and numbers, as booleans and numbers: quote them)"
    return ""


def _leaves(spec):
    """(dotted key, value, field) of every key of the grid but the slurm section (checked by
    slurm_options) and the file's own path; a section's keys are `section.key`."""
    for section_field in fields(spec):
        if section_field.name in ("path", "slurm"):
            continue
        value = getattr(spec, section_field.name)
        if is_dataclass(value):
            for leaf in fields(value):
                yield f"{section_field.name}.{leaf.name}", getattr(value, leaf.name), leaf
        else:
            yield section_field.name, value, section_field


def check_values(spec, grid: GridFile) -> None:
    """Every key's type, then its range: the fields' types and metadata (at_least, POSITIVE,
    NON_EMPTY, DISTINCT, SPARSITIES) say what each key takes."""
    for key, value, leaf in _leaves(spec):
        if not _has_type(value, leaf.type):
            raise grid.error(key, f"expected {_type_name(leaf.type)}, got {value!r}{_unquoted_hint(value, leaf.type)}")
    for key, value, leaf in _leaves(spec):
        rules = leaf.metadata
        if value is None:
            continue
        if rules.get("non_empty") and not value:
            raise grid.error(key, "must not be empty")
        repeated = sorted({str(item) for item in value if value.count(item) > 1}) if rules.get("distinct") else []
        if repeated:
            raise grid.error(key, f"lists {', '.join(repeated)} more than once")
        if "at_least" in rules and value < rules["at_least"]:
            raise grid.error(key, f"must be at least {rules['at_least']}, got {value!r}")
        if rules.get("positive") and not value > 0:
            raise grid.error(key, f"must be above 0, got {value!r}")
        for sparsity in value if rules.get("sparsities") else []:
            if not 0.0 <= sparsity < 1.0:
                raise grid.error(key, f"{sparsity!r} is outside [0, 1)")


def checked_grid(spec, lines: Optional[Dict[str, int]], method: str) -> GridFile:
    """Checks the type and range of every key (a section's as `section.key`) and the keys every
    grid has (`check_identity`); returns the GridFile the experiment's further checks report through."""
    grid = GridFile(spec.path, lines)
    check_values(spec, grid)
    check_identity(spec, grid, method)
    return grid


def check_identity(spec, grid: GridFile, method: str) -> None:
    """The keys every method's grid file has: `method`, `name` (the output folder) and exactly one
    of `corpus` and `data`."""
    if spec.method != method:
        raise grid.error("method", f"{spec.method!r} is not {method!r}, the method this file was read for")
    if not spec.name or spec.name in (".", "..") or "/" in spec.name:
        raise grid.error("name", f"{spec.name!r} is not a folder name (the default output is runs/NAME)")
    if (spec.corpus is None) == (spec.data is None):
        raise GridError(f"{grid.where('corpus' if spec.corpus is not None else 'data')}: give exactly one of "
                        "corpus (a corpus definition to synthesize) or data (a directory with one manifest folder "
                        "per language)")


def check_overrides(overrides: List[str], key: str, grid: GridFile) -> None:
    """Each override as Hydra will parse it on the fairseq-hydra-train command line of a cell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as error:
            problems = [line.strip() for line in str(error).splitlines()
                        if line.strip() and not line.startswith(("Error parsing override", "See https:"))]
            raise grid.error(key, f"{override!r} is not a Hydra override such as optimization.clip_norm=10 "
                             f"({problems[0] if problems else 'unreadable'})") from None


def check_languages(spec, grid: GridFile, languages: Dict[str, Sequence[str]]) -> None:
    """Every language (`languages`: the key that lists them -> the languages) exists in the corpus
    definition of `spec.corpus`, or has a complete manifest folder under `spec.data`; without a
    `pretrained` checkpoint, `data` also holds the pretraining manifests."""
    keys: Dict[str, str] = {}
    for key, listed in languages.items():
        for language in listed:
            keys.setdefault(language, key)
    if spec.corpus is not None:
        from ..data.corpora import load_definition
        from ..data.errors import DataError

        try:
            definition = load_definition(spec.corpus)
        except DataError as error:
            raise grid.error("corpus", str(error)) from None
        unknown = [language for language in keys if language not in definition.languages]
        if unknown:
            raise grid.error(keys[unknown[0]], f"language {unknown[0]!r} is not in corpus {spec.corpus} "
                             f"(it has {', '.join(definition.languages)})")
        return
    for language, key in keys.items():
        for name in MANIFEST_FILES:
            manifest = Path(spec.data) / language / name
            if not manifest.is_file():
                raise grid.error(key, f"language {language!r}: missing manifest {manifest}")
    if spec.pretrained is None and not (Path(spec.data) / "pretrain" / "train.tsv").is_file():
        raise grid.error("data", f"no pretrained checkpoint given and no {Path(spec.data) / 'pretrain' / 'train.tsv'} "
                         "to pretrain on")


def checkpoint_depth(grid: GridFile, key: str, path: str, kind: str, advice: str) -> int:
    """The encoder layers of the checkpoint `key` names, if it is of `kind` (read without its weights)."""
    from ..plugin.formats.checkpoint_kinds import CheckpointKindError, encoder_layer_count, read_checkpoint_of_kind

    try:
        return encoder_layer_count(read_checkpoint_of_kind(path, kind, key, advice, weights=False))
    except CheckpointKindError as error:  # its message starts with the key
        raise GridError(f"{grid.where(key)}: {error}") from None




def starting_depth(spec, grid: GridFile, advice: str) -> Tuple[int, str]:
    """(encoder layers of the model the grid starts from, how errors name that model): the
    `pretrained` checkpoint (refused with `advice` unless it is a pretraining checkpoint), or the
    model the pretraining config builds."""
    from ..plugin.formats.checkpoint_kinds import PRETRAINING
    from ..runner import CONFIG_DIR

    if spec.pretrained is not None:
        depth = checkpoint_depth(grid, "pretrained", spec.pretrained, PRETRAINING, advice)
        return depth, f"pretrained {spec.pretrained}"
    config = CONFIG_DIR / "pretrain" / f"{PRETRAIN_CONFIG_NAME}.yaml"
    return yaml.safe_load(config.read_text())["model"]["encoder_layers"], f"the model pretrained by {config}"


def check_layers_within(grid: GridFile, keys_and_layers: Dict[str, str], depth: int, described: str) -> None:
    """Each layer selection (key -> its text, as core.targets.parse_layers reads it) lies within an
    encoder of `depth` layers."""
    from ..core.targets import parse_layers

    for key, text in keys_and_layers.items():
        layers = parse_layers(text)
        if layers and layers[-1] >= depth:
            raise grid.error(key, f"layer {layers[-1]} is selected but {described} has {depth} encoder layers "
                             f"(0-{depth - 1})")
