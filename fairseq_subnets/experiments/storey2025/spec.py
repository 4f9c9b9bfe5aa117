"""Storey et al. (2025) grid files: reading, complete validation, and the downstream cells they expand to.

A grid file names upstream languages, downstream languages, sparsities, mask sources and seeds (see
examples/storey2025/grid.yaml). It is checked completely before anything runs, since a cell that
fails on a bad setting does so after the cells before it have trained for minutes: every key's
type and range, unknown keys (with the closest known one), languages against the corpus or the
manifest folders, checkpoints against their kind, and `prune.targets` / `prune.layers` against the
encoder, which is known before anything trains (the `pretrained` checkpoint's, or the one the
pretraining config builds). Every error names the file, the line of the key and the dotted key.
"""
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ...engine.executors import SlurmOptions
from ...engine.grid_file import (
    DISTINCT, NON_EMPTY, POSITIVE, SPARSITIES, GridError, GridFile, at_least, check_languages, check_layers_within,
    check_overrides, checked_grid, checkpoint_depth, read_grid, starting_depth,
)

METHOD = "storey2025"
SOURCES = ("own", "swap", "union", "base", "random")


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


def load_grid(path) -> GridSpec:
    """Reads and validates a grid file; every error names the file, the line and the offending key."""
    spec, lines = read_grid(path, GridSpec, {"upstream": UpstreamSpec, "prune": PruneSpec,
                                              "downstream": DownstreamSpec})
    validate(spec, lines)
    return spec


# --------------------------------------------------------------------------------- validation


def validate(spec: GridSpec, lines: Optional[Dict[str, int]] = None) -> None:
    """Checks a grid, read from a file (`lines`: where its keys are) or built in code, completely
    before anything runs; GridError names the file, the line where known, and the key."""
    grid = checked_grid(spec, lines, METHOD)
    check_sources(spec, grid)
    check_pruning(spec, grid)
    check_overrides(spec.upstream.overrides, "upstream.overrides", grid)
    check_overrides(spec.downstream.overrides, "downstream.overrides", grid)
    for language in spec.upstream.checkpoints:
        if language not in spec.upstream.languages:
            raise grid.error(f"upstream.checkpoints.{language}", f"{language} is not in upstream.languages")
    check_languages(spec, grid, {"upstream.languages": spec.upstream.languages,
                                 "downstream.languages": spec.downstream.languages})
    check_encoders(spec, grid)


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


def check_encoders(spec: GridSpec, grid: GridFile) -> None:
    """The checkpoints are of their kind, the given upstream models are as deep as the pretrained
    model (their masks are compared and merged with its), and prune.layers lies within it."""
    from ...plugin.formats.checkpoint_kinds import FINE_TUNED

    depth, described = starting_depth(spec, grid, "a fine-tuned model goes in upstream.checkpoints.LANGUAGE")
    for language, path in spec.upstream.checkpoints.items():
        key = f"upstream.checkpoints.{language}"
        upstream_depth = checkpoint_depth(grid, key, path, FINE_TUNED, "a pretraining checkpoint goes in pretrained")
        if upstream_depth != depth:
            raise grid.error(key, f"{path} has {upstream_depth} encoder layers but {described} has {depth}")
    check_layers_within(grid, {"prune.layers": spec.prune.layers}, depth, described)


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
