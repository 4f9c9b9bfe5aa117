"""Storey et al. (2025) grid files: reading, complete validation, and the downstream cells they expand to.

A grid file names upstream languages, downstream languages, sparsities, mask sources and seeds (see
examples/storey2025/grid.yaml). It is checked completely before anything runs: an unknown language,
a missing manifest file, a sparsity outside [0, 1) or an unknown key stops it with the file and key.
"""
import itertools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from ...engine.executors import SlurmOptions, slurm_options

METHOD = "storey2025"
SOURCES = ("own", "swap", "union", "base", "random")
MANIFEST_FILES = ("train.tsv", "train.ltr", "valid.tsv", "valid.ltr", "test.tsv", "test.ltr", "dict.ltr.txt")


class GridError(ValueError):
    """The grid file is unusable; the message names the file and the key."""


@dataclass
class UpstreamSpec:
    languages: List[str] = field(default_factory=list)
    updates: int = 800
    lr: float = 0.0005
    overrides: List[str] = field(default_factory=list)
    checkpoints: Dict[str, str] = field(default_factory=dict)
    """Already fine-tuned upstream models by language: evaluated and pruned, not trained again."""


@dataclass
class PruneSpec:
    method: str = "global-l1"
    sparsities: List[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    targets: str = "all"
    layers: str = "all"


@dataclass
class DownstreamSpec:
    languages: List[str] = field(default_factory=list)
    sources: List[str] = field(default_factory=lambda: ["own"])
    source_sparsities: Optional[List[float]] = None
    """Sparsities at which sources other than `own` run (default: every non-zero sparsity)."""
    epochs: int = 2
    freeze_epochs: int = 1
    lr: float = 0.0005
    max_tokens: int = 400000
    world_size: int = 1
    overrides: List[str] = field(default_factory=list)


@dataclass
class GridSpec:
    path: str = ""
    method: str = METHOD
    name: str = "grid"
    corpus: Optional[str] = None
    data: Optional[str] = None
    pretrained: Optional[str] = None
    pretrain_updates: int = 600
    seeds: List[int] = field(default_factory=lambda: [1])
    upstream: UpstreamSpec = field(default_factory=UpstreamSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    downstream: DownstreamSpec = field(default_factory=DownstreamSpec)
    iou_sparsities: Optional[List[float]] = None
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """Resources of each cell under `--executor slurm` (see engine/executors.py)."""


# ------------------------------------------------------------------------------------ grid file


def _section(raw, spec_class, where, path):
    if raw is None:
        return spec_class()
    if not isinstance(raw, dict):
        raise GridError(f"{path}: {where} must be a mapping")
    known = {f.name for f in fields(spec_class)} - {"path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridError(f"{path}: unknown key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(known))})")
    return spec_class(**raw)


def load_grid(path) -> GridSpec:
    """Reads and validates a grid file; every error names the file and the offending key."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise GridError(f"{path}: no such grid file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise GridError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: the grid file must be a mapping of keys")
    sections = {key: raw.pop(key, None) for key in ("upstream", "prune", "downstream", "slurm")}
    spec = _section(raw, GridSpec, "", path)
    spec.path = path
    spec.upstream = _section(sections["upstream"], UpstreamSpec, "upstream", path)
    spec.prune = _section(sections["prune"], PruneSpec, "prune", path)
    spec.downstream = _section(sections["downstream"], DownstreamSpec, "downstream", path)
    try:
        spec.slurm = slurm_options(sections["slurm"], "slurm")
    except ValueError as error:
        raise GridError(f"{path}: {error}") from None
    validate(spec)
    return spec


def _check_sparsities(values, key, path):
    if not isinstance(values, list) or not values:
        raise GridError(f"{path}: {key} must be a non-empty list of sparsities")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise GridError(f"{path}: {key}: {value!r} is outside [0, 1)")


def validate(spec: GridSpec) -> None:
    path = spec.path
    if spec.method != METHOD:
        raise GridError(f"{path}: method {spec.method!r} is not {METHOD!r}, the method this file was read for")
    if (spec.corpus is None) == (spec.data is None):
        raise GridError(f"{path}: give exactly one of corpus (a corpus definition to synthesize) or data "
                        "(a directory with one manifest folder per language)")
    for key, languages in (("upstream.languages", spec.upstream.languages),
                           ("downstream.languages", spec.downstream.languages)):
        if not isinstance(languages, list) or not languages:
            raise GridError(f"{path}: {key} must be a non-empty list of language codes")
    _check_sparsities(spec.prune.sparsities, "prune.sparsities", path)
    for key in ("source_sparsities",):
        if getattr(spec.downstream, key) is not None:
            _check_sparsities(getattr(spec.downstream, key), f"downstream.{key}", path)
    if spec.iou_sparsities is not None:
        _check_sparsities(spec.iou_sparsities, "iou_sparsities", path)
    for number_key, value, minimum in (
        ("upstream.updates", spec.upstream.updates, 1), ("downstream.epochs", spec.downstream.epochs, 1),
        ("downstream.freeze_epochs", spec.downstream.freeze_epochs, 0),
        ("downstream.world_size", spec.downstream.world_size, 1), ("pretrain_updates", spec.pretrain_updates, 1),
    ):
        if not isinstance(value, int) or value < minimum:
            raise GridError(f"{path}: {number_key} must be an integer >= {minimum}, got {value!r}")
    if not spec.seeds or not all(isinstance(seed, int) for seed in spec.seeds):
        raise GridError(f"{path}: seeds must be a non-empty list of integers")
    for source in spec.downstream.sources:
        kind, _, partner = str(source).partition(":")
        if kind not in SOURCES:
            raise GridError(f"{path}: downstream.sources: unknown source {source!r} (known: {', '.join(SOURCES)}; "
                            "swap and union take an optional :LANGUAGE)")
        if partner and (kind not in ("swap", "union") or partner not in spec.upstream.languages):
            raise GridError(f"{path}: downstream.sources: {source!r}: only swap/union take a language, and it must "
                            f"be one of upstream.languages ({', '.join(spec.upstream.languages)})")
    from ...core.pruning import METHODS

    if spec.prune.method not in METHODS:
        raise GridError(f"{path}: prune.method {spec.prune.method!r} is not one of {', '.join(METHODS)}")
    if spec.pretrained is not None and not os.path.isfile(spec.pretrained):
        raise GridError(f"{path}: pretrained: {spec.pretrained} does not exist")
    for language, checkpoint in spec.upstream.checkpoints.items():
        if language not in spec.upstream.languages:
            raise GridError(f"{path}: upstream.checkpoints.{language}: {language} is not in upstream.languages")
        if not os.path.isfile(checkpoint):
            raise GridError(f"{path}: upstream.checkpoints.{language}: {checkpoint} does not exist")
    check_languages(spec)


def check_languages(spec: GridSpec) -> None:
    """Every language must exist in the corpus definition, or have a complete manifest folder."""
    languages = list(dict.fromkeys(spec.upstream.languages + spec.downstream.languages))
    if spec.corpus is not None:
        from ...data.corpora import load_definition
        from ...data.errors import DataError

        try:
            definition = load_definition(spec.corpus)
        except DataError as error:
            raise GridError(f"{spec.path}: corpus: {error}") from None
        unknown = [language for language in languages if language not in definition.languages]
        if unknown:
            raise GridError(f"{spec.path}: language {unknown[0]!r} is not in corpus {spec.corpus} "
                            f"(it has {', '.join(definition.languages)})")
        return
    for language in languages:
        for name in MANIFEST_FILES:
            manifest = Path(spec.data) / language / name
            if not manifest.is_file():
                raise GridError(f"{spec.path}: language {language!r}: missing manifest {manifest}")
    if spec.pretrained is None and not (Path(spec.data) / "pretrain" / "train.tsv").is_file():
        raise GridError(f"{spec.path}: no pretrained checkpoint given and no {Path(spec.data) / 'pretrain' / 'train.tsv'} "
                        "to pretrain on")


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
