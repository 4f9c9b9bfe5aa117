"""Fu et al. (2022) grid files: reading, complete validation, and the learned-mask runs they expand to.

A grid file names the languages, the weight fine-tuning baseline, the S3-Router sweep (sparsities,
initialisation, targets), the ablations of Tables 1 and 7, the S3-Router-P / global L1 comparison of
Fig. 4, the bundle and the mask-similarity analysis (see examples/fu2022/grid.yaml). Like every
grid it is checked completely before anything runs, with the engine's reader and checks
(engine/grid_file.py): every key's type and range, unknown keys with the closest known one,
languages against the corpus or the manifest folders, and layer groups against the encoder.
Every error names the file, the line of the key and the dotted key.
"""
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional

from ...engine.grid_file import (
    DISTINCT, NON_EMPTY, POSITIVE, GridError, GridFile, PretrainedModelGrid, at_least, check_languages,
    check_layers_within, check_overrides, checked_grid, read_grid, starting_depth,
)

METHOD = "fu2022"
FRACTIONS = {"fractions": True}
"""Field metadata: fractions of weights removed, each strictly between 0 and 1 (a learned mask must
keep and drop some weights of every matrix it covers)."""
SECTIONS = ("finetune", "s3router", "ablation", "pruning", "bundle", "similarity")
ANALYSIS_LANGUAGE_KEYS = ("ablation.languages", "pruning.languages", "bundle.languages", "similarity.languages")
"""Lists of languages that default to `languages` and must lie within it; empty: that part does not run."""
LAYER_KEYS = ("s3router.layers", "pruning.layers", "similarity.layers")
MIN_CORRELATED_LANGUAGES = 3
"""stats.correlate needs three pairs of languages."""


@dataclass
class FinetuneSpec:
    """Weight fine-tuning (config `tiny`): Fig. 2's baseline and the models that Fig. 4 prunes."""
    updates: int = field(default=400, metadata=at_least(1))
    lr: float = field(default=0.0005, metadata=POSITIVE)
    overrides: List[str] = field(default_factory=list)


@dataclass
class S3RouterSpec:
    """Learned masks on the frozen pretrained weights (config `learned_masks_tiny`)."""
    updates: int = field(default=400, metadata=at_least(1))
    lr: float = field(default=0.001, metadata=POSITIVE)
    sparsities: List[float] = field(default_factory=lambda: [0.02, 0.05, 0.1],
                                    metadata={**NON_EMPTY, **DISTINCT, **FRACTIONS})
    sparsity: float = field(default=0.1, metadata=FRACTIONS)
    """The sparsity of the ablations, the bundle and the similarity analysis."""
    init: str = "ori"
    targets: str = "ffn"
    layers: str = "all"
    scope: str = "matrix"
    overrides: List[str] = field(default_factory=list)


@dataclass
class AblationSpec:
    """Table 1 (initialisations) and Table 7 (targets), at s3router.sparsity."""
    languages: Optional[List[str]] = field(default=None, metadata=DISTINCT)
    inits: List[str] = field(default_factory=lambda: ["ri", "wmi", "ori"], metadata=DISTINCT)
    targets: List[str] = field(default_factory=lambda: ["ffn", "attn", "all"], metadata=DISTINCT)


@dataclass
class PruningSpec:
    """Fig. 4: S3-Router-P against global L1 plus weight fine-tuning, both from the fine-tuned model
    and over the same matrices (`targets`, `layers`); S3-Router-P's top-k scope is s3router.scope."""
    languages: Optional[List[str]] = field(default=None, metadata=DISTINCT)
    sparsities: List[float] = field(default_factory=lambda: [0.5, 0.7, 0.9],
                                    metadata={**NON_EMPTY, **DISTINCT, **FRACTIONS})
    updates: int = field(default=200, metadata=at_least(1))
    s3router_lr: float = field(default=0.001, metadata=POSITIVE)
    finetune_lr: float = field(default=0.0005, metadata=POSITIVE)
    init: str = "wmi"
    targets: str = "all"
    layers: str = "all"


@dataclass
class BundleSpec:
    languages: Optional[List[str]] = field(default=None, metadata=DISTINCT)


@dataclass
class SimilaritySpec:
    languages: Optional[List[str]] = field(default=None, metadata=DISTINCT)
    matrix: Optional[str] = None
    """A labelled CSV of language similarities (stats.read_labelled_matrix); None: no correlation."""
    layers: str = "all"
    """The layers whose mask similarity is reported (each, and all of them together as `total`)."""


SECTION_CLASSES = {"finetune": FinetuneSpec, "s3router": S3RouterSpec, "ablation": AblationSpec,
                   "pruning": PruningSpec, "bundle": BundleSpec, "similarity": SimilaritySpec}


@dataclass
class GridSpec(PretrainedModelGrid):
    method: str = METHOD
    name: str = METHOD
    languages: List[str] = field(default_factory=list, metadata={**NON_EMPTY, **DISTINCT})
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    s3router: S3RouterSpec = field(default_factory=S3RouterSpec)
    ablation: AblationSpec = field(default_factory=AblationSpec)
    pruning: PruningSpec = field(default_factory=PruningSpec)
    bundle: BundleSpec = field(default_factory=BundleSpec)
    similarity: SimilaritySpec = field(default_factory=SimilaritySpec)


def load_grid(path) -> GridSpec:
    """Reads and validates a grid file; every error names the file, the line and the offending key."""
    spec, lines = read_grid(path, GridSpec, SECTION_CLASSES)
    validate(spec, lines)
    return spec


# --------------------------------------------------------------------------------- validation


def validate(spec: GridSpec, lines: Optional[Dict[str, int]] = None) -> None:
    """Checks a grid, read from a file (`lines`: where its keys are) or built in code, completely
    before anything runs, and fills the analysis sections' languages left unset with `languages`."""
    grid = checked_grid(spec, lines, METHOD)
    check_fractions(spec, grid)
    check_learned_mask_settings(spec, grid)
    for key in ("finetune.overrides", "s3router.overrides"):
        check_overrides(value_of(spec, key), key, grid)
    check_analysis_languages(spec, grid)
    check_languages(spec, grid, {"languages": spec.languages})
    depth, described = starting_depth(spec, grid,
                                      "S3-Router learns masks on a pretrained model, and the grid fine-tunes its own")
    check_layers_within(grid, {key: value_of(spec, key) for key in LAYER_KEYS}, depth, described)
    check_similarity_matrix(spec, grid)


def value_of(spec: GridSpec, key: str):
    """The value of a dotted key such as `s3router.targets`."""
    section, _, leaf = key.partition(".")
    return getattr(getattr(spec, section), leaf) if leaf else getattr(spec, section)


def check_fractions(spec: GridSpec, grid: GridFile) -> None:
    for name in SECTIONS:
        section = getattr(spec, name)
        for leaf in fields(section):
            if not leaf.metadata.get("fractions"):
                continue
            value = getattr(section, leaf.name)
            for sparsity in value if isinstance(value, list) else [value]:
                if not 0.0 < sparsity < 1.0:
                    raise grid.error(f"{name}.{leaf.name}", f"{sparsity!r} is outside (0, 1): a learned mask removes "
                                     "a fraction of each matrix strictly between none and all of it")


def check_learned_mask_settings(spec: GridSpec, grid: GridFile) -> None:
    """Initialisations, scope, targets and layer groups, as the learned-mask model will read them."""
    from ...core.targets import parse_kinds, parse_layers
    from ...techniques.learned_masks.layer import SCORE_SCOPES
    from ...techniques.learned_masks.scores import SCORE_INITS

    choices = [("s3router.init", [spec.s3router.init], SCORE_INITS), ("pruning.init", [spec.pruning.init], SCORE_INITS),
               ("ablation.inits", spec.ablation.inits, SCORE_INITS),
               ("s3router.scope", [spec.s3router.scope], SCORE_SCOPES)]
    for key, values, known in choices:
        for value in values:
            if value not in known:
                raise grid.error(key, f"unknown value {value!r} (known: {', '.join(known)})")
    parsed = [(key, parse_kinds, [value_of(spec, key)]) for key in ("s3router.targets", "pruning.targets")]
    parsed.append(("ablation.targets", parse_kinds, spec.ablation.targets))
    parsed += [(key, parse_layers, [value_of(spec, key)]) for key in LAYER_KEYS]
    for key, parse, values in parsed:
        for value in values:
            try:
                parse(value, key)
            except ValueError as error:  # its message starts with the key
                raise GridError(f"{grid.where(key)}: {error}") from None


def check_analysis_languages(spec: GridSpec, grid: GridFile) -> None:
    """Each analysis list within `languages` (unset: all of them), and enough languages to compare."""
    for key in ANALYSIS_LANGUAGE_KEYS:
        section = getattr(spec, key.partition(".")[0])
        if section.languages is None:
            section.languages = list(spec.languages)
        unknown = [language for language in section.languages if language not in spec.languages]
        if unknown:
            raise grid.error(key, f"{unknown[0]!r} is not one of languages ({', '.join(spec.languages)})")
    compared = spec.similarity.languages
    if len(compared) == 1:
        raise grid.error("similarity.languages", "comparing masks needs at least two languages (or [] for none)")
    if spec.similarity.matrix is not None and len(compared) < MIN_CORRELATED_LANGUAGES:
        raise grid.error("similarity.matrix", f"a correlation needs at least {MIN_CORRELATED_LANGUAGES} languages "
                         f"(3 pairs); similarity.languages has {len(compared)}")


def check_similarity_matrix(spec: GridSpec, grid: GridFile) -> None:
    """The matrix file holds a finite value for every pair of similarity.languages."""
    import numpy

    from ...core.stats import read_labelled_matrix

    if spec.similarity.matrix is None or not spec.similarity.languages:
        return
    try:
        matrix = read_labelled_matrix(spec.similarity.matrix, spec.similarity.languages)
    except ValueError as error:  # its message starts with the file
        raise grid.error("similarity.matrix", str(error)) from None
    if not numpy.isfinite(matrix).all():
        raise grid.error("similarity.matrix", f"{spec.similarity.matrix}: holds a value that is not a finite number")


# ------------------------------------------------------------------------------------- planning


def sparsity_label(sparsity: float) -> str:
    """The sparsity in cell names: every distinct value of a grid gets a distinct label."""
    return f"{sparsity:g}"


@dataclass(frozen=True)
class LearnedRun:
    """One S3-Router run (learned masks on the pretrained weights), by its coordinates in the grid."""

    language: str
    sparsity: float
    init: str
    targets: str

    @property
    def name(self) -> str:
        return f"s3router-{self.language}-s{sparsity_label(self.sparsity)}-{self.init}-{self.targets.replace(',', '+')}"


def reference_run(spec: GridSpec, language: str) -> LearnedRun:
    """The language's run at the grid's own S3-Router settings: what the bundle and the similarity use."""
    router = spec.s3router
    return LearnedRun(language, router.sparsity, router.init, router.targets)


def plan_learned_runs(spec: GridSpec) -> List[LearnedRun]:
    """The S3-Router runs of Fig. 2 (each language at each sparsity), of the bundle and similarity
    analysis, and of the ablations, each run once however many of them use it."""
    router, ablation = spec.s3router, spec.ablation
    runs = [LearnedRun(language, sparsity, router.init, router.targets)
            for language in spec.languages for sparsity in router.sparsities]
    runs += [reference_run(spec, language) for language in spec.languages
             if language in spec.bundle.languages or language in spec.similarity.languages]
    for language in ablation.languages:
        runs += [LearnedRun(language, router.sparsity, init, router.targets) for init in ablation.inits]
        runs += [LearnedRun(language, router.sparsity, router.init, targets) for targets in ablation.targets]
    return list(dict.fromkeys(runs))
