"""Storey et al. (2025) grid files: reading, complete validation, and the downstream cells they expand to.

A grid file names upstream languages, downstream languages, sparsities, mask sources and seeds (see
examples/storey2025/grid.yaml). It is checked completely before anything runs, since a cell that
fails on a bad setting does so after the cells before it have trained for minutes: every key's
type and range, unknown keys (with the closest known one), languages against the corpus or the
manifest folders, checkpoints against their kind, and `prune.targets` / `prune.layers` against the
encoder, which is known before anything trains (the `pretrained` checkpoint's, or the one the
pretraining config builds). Every error names the file, the line of the key and the dotted key.
"""
import difflib
import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Union, get_args, get_origin

import yaml

from ...engine.executors import SlurmOptions, slurm_options

METHOD = "storey2025"
SOURCES = ("own", "swap", "union", "base", "random")
MANIFEST_FILES = ("train.tsv", "train.ltr", "valid.tsv", "valid.ltr", "test.tsv", "test.ltr", "dict.ltr.txt")
PRETRAIN_CONFIG_NAME = "tiny"
"""The pretraining config (config/pretrain/) of a grid without a `pretrained` checkpoint."""
SECTIONS = ("upstream", "prune", "downstream", "slurm")


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
class UpstreamSpec:
    languages: List[str] = field(default_factory=list, metadata={**NON_EMPTY, **DISTINCT})
    updates: int = field(default=800, metadata=at_least(1))
    lr: float = field(default=0.0005, metadata=POSITIVE)
    overrides: List[str] = field(default_factory=list)
    checkpoints: Dict[str, str] = field(default_factory=dict)
    """Already fine-tuned upstream models by language: evaluated and pruned, not trained again."""


@dataclass
class PruneSpec:
    method: str = "global-l1"
    sparsities: List[float] = field(default_factory=lambda: [0.0, 0.5, 0.9], metadata={**NON_EMPTY, **SPARSITIES})
    targets: str = "all"
    layers: str = "all"


@dataclass
class DownstreamSpec:
    languages: List[str] = field(default_factory=list, metadata={**NON_EMPTY, **DISTINCT})
    sources: List[str] = field(default_factory=lambda: ["own"], metadata={**NON_EMPTY, **DISTINCT})
    source_sparsities: Optional[List[float]] = field(default=None, metadata={**NON_EMPTY, **SPARSITIES})
    """Sparsities at which sources other than `own` run (default: every non-zero sparsity)."""
    epochs: int = field(default=2, metadata=at_least(1))
    freeze_epochs: int = field(default=1, metadata=at_least(0))
    lr: float = field(default=0.0005, metadata=POSITIVE)
    max_tokens: int = field(default=400000, metadata=at_least(1))
    world_size: int = field(default=1, metadata=at_least(1))
    overrides: List[str] = field(default_factory=list)


@dataclass
class GridSpec:
    path: str = ""
    method: str = METHOD
    name: str = "grid"
    corpus: Optional[str] = None
    data: Optional[str] = None
    pretrained: Optional[str] = None
    pretrain_updates: int = field(default=600, metadata=at_least(1))
    seeds: List[int] = field(default_factory=lambda: [1], metadata={**NON_EMPTY, **DISTINCT})
    upstream: UpstreamSpec = field(default_factory=UpstreamSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    downstream: DownstreamSpec = field(default_factory=DownstreamSpec)
    iou_sparsities: Optional[List[float]] = field(default=None, metadata={**NON_EMPTY, **SPARSITIES})
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """Resources of each cell under `--executor slurm` (see engine/executors.py)."""


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
    and a bad slurm section are refused naming the file, the line and the key. Every method's
    `load_grid` starts here, then validates what it read."""
    path = str(path)
    raw, lines = read_yaml(path)
    grid = GridFile(path, lines)
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the grid file must be a mapping of keys")
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


def load_grid(path) -> GridSpec:
    """Reads and validates a grid file; every error names the file, the line and the offending key."""
    spec, lines = read_grid(path, GridSpec, {"upstream": UpstreamSpec, "prune": PruneSpec,
                                              "downstream": DownstreamSpec})
    validate(spec, lines)
    return spec


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


def _leaves(spec: GridSpec):
    """(dotted key, value, field) of every key of the grid but the slurm section (checked by
    slurm_options) and the file's own path."""
    for section_field in fields(spec):
        if section_field.name in ("path", "slurm"):
            continue
        value = getattr(spec, section_field.name)
        if section_field.name in SECTIONS:
            for leaf in fields(value):
                yield f"{section_field.name}.{leaf.name}", getattr(value, leaf.name), leaf
        else:
            yield section_field.name, value, section_field


def check_values(spec: GridSpec, grid: GridFile) -> None:
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


# --------------------------------------------------------------------------------- validation


def validate(spec: GridSpec, lines: Optional[Dict[str, int]] = None) -> None:
    """Checks a grid, read from a file (`lines`: where its keys are) or built in code, completely
    before anything runs; GridError names the file, the line where known, and the key."""
    grid = GridFile(spec.path, lines)
    check_values(spec, grid)
    check_identity(spec, grid, METHOD)
    check_sources(spec, grid)
    check_pruning(spec, grid)
    check_overrides(spec.upstream.overrides, "upstream.overrides", grid)
    check_overrides(spec.downstream.overrides, "downstream.overrides", grid)
    for language in spec.upstream.checkpoints:
        if language not in spec.upstream.languages:
            raise grid.error(f"upstream.checkpoints.{language}", f"{language} is not in upstream.languages")
    check_languages(spec, grid)
    check_encoders(spec, grid)


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


def check_sources(spec: GridSpec, grid: GridFile) -> None:
    for source in spec.downstream.sources:
        kind, _, partner = source.partition(":")
        if kind not in SOURCES:
            raise grid.error("downstream.sources", f"unknown source {source!r} (known: {', '.join(SOURCES)}; "
                             "swap and union take an optional :LANGUAGE)")
        if partner and (kind not in ("swap", "union") or partner not in spec.upstream.languages):
            raise grid.error("downstream.sources", f"{source!r}: only swap/union take a language, and it must "
                             f"be one of upstream.languages ({', '.join(spec.upstream.languages)})")
    own_sparsities = set(spec.prune.sparsities)
    for sparsity in spec.downstream.source_sparsities or []:
        if sparsity not in own_sparsities:
            raise grid.error("downstream.source_sparsities", f"{sparsity!r} is not one of prune.sparsities "
                             "(no cell runs at it)")


def check_pruning(spec: GridSpec, grid: GridFile) -> None:
    """prune.method, and prune.targets / prune.layers as text; the layers against the encoder in check_encoders."""
    from ...core.pruning import METHODS
    from ...core.targets import parse_kinds, parse_layers

    if spec.prune.method not in METHODS:
        raise grid.error("prune.method", f"{spec.prune.method!r} is not one of {', '.join(METHODS)}")
    for key, parse in (("prune.targets", parse_kinds), ("prune.layers", parse_layers)):
        try:
            parse(getattr(spec.prune, key.split(".")[1]), key)
        except ValueError as error:  # its message starts with the key
            raise GridError(f"{grid.where(key)}: {error}") from None


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


def check_languages(spec: GridSpec, grid: GridFile) -> None:
    """Every language must exist in the corpus definition, or have a complete manifest folder."""
    languages = list(dict.fromkeys(spec.upstream.languages + spec.downstream.languages))

    def key_of(language):
        return "upstream.languages" if language in spec.upstream.languages else "downstream.languages"

    if spec.corpus is not None:
        from ...data.corpora import load_definition
        from ...data.errors import DataError

        try:
            definition = load_definition(spec.corpus)
        except DataError as error:
            raise grid.error("corpus", str(error)) from None
        unknown = [language for language in languages if language not in definition.languages]
        if unknown:
            raise grid.error(key_of(unknown[0]), f"language {unknown[0]!r} is not in corpus {spec.corpus} "
                             f"(it has {', '.join(definition.languages)})")
        return
    for language in languages:
        for name in MANIFEST_FILES:
            manifest = Path(spec.data) / language / name
            if not manifest.is_file():
                raise grid.error(key_of(language), f"language {language!r}: missing manifest {manifest}")
    if spec.pretrained is None and not (Path(spec.data) / "pretrain" / "train.tsv").is_file():
        raise grid.error("data", f"no pretrained checkpoint given and no {Path(spec.data) / 'pretrain' / 'train.tsv'} "
                         "to pretrain on")


def checkpoint_depth(grid: GridFile, key: str, path: str, kind: str, advice: str) -> int:
    """The encoder layers of the checkpoint `key` names, if it is of `kind` (read without its weights)."""
    from ...plugin.checkpoint_kinds import CheckpointKindError, encoder_layer_count, read_checkpoint_of_kind

    try:
        return encoder_layer_count(read_checkpoint_of_kind(path, kind, key, advice, weights=False))
    except CheckpointKindError as error:  # its message starts with the key
        raise GridError(f"{grid.where(key)}: {error}") from None


def check_encoders(spec: GridSpec, grid: GridFile) -> None:
    """The checkpoints are of their kind, the given upstream models are as deep as the pretrained
    model (their masks are compared and merged with its), and prune.layers lies within it."""
    from ...core.targets import parse_layers
    from ...plugin.checkpoint_kinds import FINE_TUNED, PRETRAINING
    from ...runner import CONFIG_DIR

    if spec.pretrained is not None:
        depth = checkpoint_depth(grid, "pretrained", spec.pretrained, PRETRAINING,
                                  "a fine-tuned model goes in upstream.checkpoints.LANGUAGE")
        described = f"pretrained {spec.pretrained}"
    else:
        config = CONFIG_DIR / "pretrain" / f"{PRETRAIN_CONFIG_NAME}.yaml"
        depth = yaml.safe_load(config.read_text())["model"]["encoder_layers"]
        described = f"the model pretrained by {config}"
    for language, path in spec.upstream.checkpoints.items():
        key = f"upstream.checkpoints.{language}"
        upstream_depth = checkpoint_depth(grid, key, path, FINE_TUNED, "a pretraining checkpoint goes in pretrained")
        if upstream_depth != depth:
            raise grid.error(key, f"{path} has {upstream_depth} encoder layers but {described} has {depth}")
    layers = parse_layers(spec.prune.layers)
    if layers and layers[-1] >= depth:
        raise grid.error("prune.layers", f"layer {layers[-1]} is selected but {described} has {depth} encoder layers "
                         f"(0-{depth - 1})")


# ------------------------------------------------------------------------------------- planning


def sparsity_label(sparsity):
    return f"{sparsity:.2f}"


@dataclass(frozen=True)
class DownstreamCell:
    """One downstream fine-tuning run and its evaluation, by its coordinates in the grid."""

    upstream: str
    downstream: str
    sparsity: float
    source: str
    partner: str
    seed: int

    @property
    def mask_language(self):
        if self.sparsity == 0:
            return ""
        return {"own": self.upstream, "swap": self.partner, "union": f"{self.upstream}+{self.partner}",
                "base": "base", "random": "random"}[self.source]

    @property
    def name(self):
        source = f"{self.source}_{self.partner}" if self.partner else self.source
        return f"{self.upstream}-{self.downstream}-s{sparsity_label(self.sparsity)}-{source}-seed{self.seed}"


def plan_cells(spec: GridSpec) -> List[DownstreamCell]:
    """Every downstream cell; at sparsity 0 all sources are the unmasked model, so only `own` runs."""
    down = spec.downstream
    source_sparsities = down.source_sparsities or [s for s in spec.prune.sparsities if s > 0]
    cells = []
    for seed, upstream, downstream, sparsity in itertools.product(
        spec.seeds, spec.upstream.languages, down.languages, spec.prune.sparsities
    ):
        for source in down.sources:
            kind, _, partner = str(source).partition(":")
            if kind != "own" and (sparsity == 0 or sparsity not in source_sparsities):
                continue
            if kind in ("swap", "union"):
                partners = [partner] if partner else [lang for lang in spec.upstream.languages if lang != upstream]
                cells += [DownstreamCell(upstream, downstream, sparsity, kind, p, seed) for p in partners if p != upstream]
            else:
                cells.append(DownstreamCell(upstream, downstream, sparsity, kind, "", seed))
    return list(dict.fromkeys(cells))
