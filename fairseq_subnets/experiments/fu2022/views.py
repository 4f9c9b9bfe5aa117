"""The views of an S3-Router grid, laid out like Fu et al. (2022) in miniature.

Input: the grid's `results.csv` (one row per trained or bundle-decoded configuration) and, when
present beside it, `similarity.csv` (cosine similarity of two languages' learned masks per layer,
beside the pair's language similarity) and `correlation.csv` (Pearson and Spearman between the two,
per layer). Output: Markdown and CSV tables, PNG figures and a `report.md` that shows them in order,
built from the engine's report blocks. A configuration whose CER is empty (not finished, failed) or
that is absent from results.csv is shown as missing, never as zero.

The views find their configurations in the rows themselves, so they draw hand-made results too: the
Fig. 2 curves are the S3-Router settings run at two or more sparsities, the Table 1 (Table 7)
groups are the ones where several initialisations (targets) ran with everything else equal.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ...engine.report import (
    ABSENT, MISSING_MARK, Column, Heatmap, LinePlot, Measure, ResultsError, ScatterPlot, Table, View, bounded_field,
    choice_field, locate_results, mean_measure, nonempty_field, number_field, ordered, read_rows, sparsity_text,
    status_lines, write_views,
)
from ...engine.results import RESULTS_CSV as RESULTS_FILE
from .cells import (
    BUNDLE, CORRELATION_COLUMNS, CORRELATION_FILE, GLOBAL_L1, S3ROUTER, S3ROUTER_P, SIMILARITY_COLUMNS,
    SIMILARITY_FILE, WEIGHTS,
)

METHODS = (WEIGHTS, S3ROUTER, S3ROUTER_P, GLOBAL_L1, BUNDLE)
LEARNED = (S3ROUTER, S3ROUTER_P, BUNDLE)
"""Rows of runs with learned masks, which name their initialisation and targets."""
RESULT_COLUMNS = ("cell", "method", "language", "sparsity", "init", "targets", "layers", "cer", "wer", "own_cer",
                  "mask_bytes", "head_bytes", "backbone_fraction")
SETTING_FIELDS = ("init", "targets", "layers")
"""What a learned-mask run's masks are, beside its language and sparsity."""
INIT_ORDER = ("ri", "wmi", "ori")
"""Table 1's column order; other initialisations follow in the order of results.csv."""
SPARSITY_AXIS = "Sparsity (%)"
CER_AXIS = "CER (%)"
WEIGHTS_LABEL = "weight fine-tuning"
LEGEND = (f"`{MISSING_MARK}` (an empty CSV field): no result (not finished, failed, or not run), never zero. "
          "One seed per configuration.")


# ------------------------------------------------------------------------------------------ input


@dataclass(frozen=True)
class Run:
    """One row of results.csv. A weight fine-tuning row is one per language (its sparsity 0, no masks)."""
    line: int
    cell: str
    method: str
    language: str
    sparsity: float
    init: str
    targets: str
    layers: str
    cer: Optional[float]
    wer: Optional[float]
    own_cer: Optional[float]
    mask_bytes: Optional[float]
    head_bytes: Optional[float]
    backbone_fraction: Optional[float]

    @property
    def configuration(self) -> tuple:
        return self.method, self.language, self.sparsity, self.init, self.targets, self.layers

    @property
    def setting(self) -> Tuple[str, str, str]:
        return self.init, self.targets, self.layers


def _non_negative(fields: Dict[str, str], column: str, where: str) -> Optional[float]:
    value = number_field(fields, column, where)
    if value is not None and value < 0:
        raise ResultsError(f"{where}: column {column}: {value:g} is negative")
    return value


def _run_from_fields(fields: Dict[str, str], path: Path, line: int) -> Run:
    where = f"{path}:{line}"
    method = choice_field(fields, "method", where, METHODS)
    language = nonempty_field(fields, "language", where, "every cell names its language")
    sparsity = bounded_field(fields, "sparsity", where, 0.0, 1.0, high_included=False)
    init, targets, layers = fields["init"], fields["targets"], fields["layers"] or "all"
    if method == WEIGHTS:
        if sparsity != 0:
            raise ResultsError(f"{where}: column sparsity: weight fine-tuning prunes nothing, got {sparsity:g}")
        init, targets, layers = "", "", ""
    elif sparsity == 0:
        raise ResultsError(f"{where}: column sparsity: a {method} row removes weights, got 0")
    if method in LEARNED:
        init = nonempty_field(fields, "init", where, f"a {method} row names its score initialisation")
    if method != WEIGHTS:
        targets = nonempty_field(fields, "targets", where, f"a {method} row names the matrices it masks")
    backbone_fraction = number_field(fields, "backbone_fraction", where)
    if backbone_fraction is not None:
        backbone_fraction = bounded_field(fields, "backbone_fraction", where, 0.0, 1.0, high_included=True)
    return Run(line, fields["cell"], method, language, sparsity, init, targets, layers,
               *(_non_negative(fields, column, where) for column in ("cer", "wer", "own_cer", "mask_bytes",
                                                                     "head_bytes")),
               backbone_fraction)


def read_results(path) -> List[Run]:
    """Every row of results.csv, validated; a configuration may appear only once."""
    path, runs, seen = Path(path), [], {}
    for line, fields in read_rows(path, RESULT_COLUMNS):
        run = _run_from_fields(fields, path, line)
        if run.configuration in seen:
            raise ResultsError(f"{path}:{line}: column cell: the configuration of this row is already on line "
                               f"{seen[run.configuration]}")
        seen[run.configuration] = line
        runs.append(run)
    return runs


@dataclass(frozen=True)
class Pair:
    """Two languages' learned masks compared in one layer (or `total`: all masked layers together)."""
    layer: str
    a: str
    b: str
    mask_cosine: float
    language_similarity: Optional[float]


def read_similarity(path) -> List[Pair]:
    path, pairs, seen = Path(path), [], {}
    for line, fields in read_rows(path, SIMILARITY_COLUMNS):
        where = f"{path}:{line}"
        pair = Pair(nonempty_field(fields, "layer", where, "a layer index or total"),
                    nonempty_field(fields, "a", where, "a language"), nonempty_field(fields, "b", where, "a language"),
                    bounded_field(fields, "mask_cosine", where, 0.0, 1.0, high_included=True),
                    number_field(fields, "language_similarity", where))
        key = (pair.layer, *sorted((pair.a, pair.b)))
        if pair.a == pair.b:
            raise ResultsError(f"{where}: column b: {pair.b} is also column a (a mask is not compared with itself)")
        if key in seen:
            raise ResultsError(f"{where}: column b: {pair.a}-{pair.b} in layer {pair.layer} is already on line "
                               f"{seen[key]}")
        seen[key] = line
        pairs.append(pair)
    return pairs


@dataclass(frozen=True)
class Correlation:
    pearson: Optional[float]
    spearman: Optional[float]
    pairs: int


def read_correlations(path) -> Dict[str, Correlation]:
    """layer -> its correlation; an empty pearson or spearman is undefined (one side constant)."""
    path, correlations = Path(path), {}
    for line, fields in read_rows(path, CORRELATION_COLUMNS):
        where = f"{path}:{line}"
        layer = nonempty_field(fields, "layer", where, "a layer index or total")
        if layer in correlations:
            raise ResultsError(f"{where}: column layer: {layer} appears twice")
        values = [None if not fields[column] else bounded_field(fields, column, where, -1.0, 1.0, high_included=True)
                  for column in ("pearson", "spearman")]
        pairs = _non_negative(fields, "pairs", where)
        if pairs is None or pairs != int(pairs):
            raise ResultsError(f"{where}: column pairs: {fields['pairs']!r} is not a number of pairs")
        correlations[layer] = Correlation(*values, int(pairs))
    return correlations


# ----------------------------------------------------------------------------------------- values


def measure(run: Optional[Run], column: str = "cer") -> Measure:
    """A run's value as a Measure: absent without the run, missing while it has no result."""
    return ABSENT if run is None else mean_measure([getattr(run, column)])


def setting_text(init: str, targets: str, layers: str) -> str:
    """`ori, ffn` (plus `, layers 0-1` when not every layer is masked)."""
    text = ", ".join(part for part in (init, targets) if part)
    return text + (f", layers {layers}" if layers not in ("", "all") else "")


def layer_text(layer: str) -> str:
    return "all layers" if layer == "total" else f"layer {layer}"


def colours_of(labels: Sequence[str]) -> Dict[str, str]:
    return {label: f"C{position % 10}" for position, label in enumerate(labels)}


class Grid:
    """The runs by configuration, so each view asks for a run by its coordinates."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = list(runs)
        self.by_configuration = {run.configuration: run for run in self.runs}
        self.weights = {run.language: run for run in self.runs if run.method == WEIGHTS}

    def find(self, method: str, language: str, sparsity: float, setting: Tuple[str, str, str]) -> Optional[Run]:
        return self.by_configuration.get((method, language, sparsity, *setting))

    def of(self, *methods: str) -> List[Run]:
        return [run for run in self.runs if run.method in methods]

    def weights_cer(self, language: str, column: str = "cer") -> Measure:
        return measure(self.weights.get(language), column)


def _curves(grid: Grid, language: str, sparsities: Sequence[float],
            series: Dict[str, Tuple[str, Tuple[str, str, str]]]) -> Dict[str, List[Tuple[float, Measure]]]:
    """CER over sparsity per label (label -> (method, setting)), and weight fine-tuning as a level line."""
    curves = {label: [(100 * sparsity, measure(grid.find(method, language, sparsity, setting)))
                      for sparsity in sparsities] for label, (method, setting) in series.items()}
    curves[WEIGHTS_LABEL] = [(100 * sparsity, grid.weights_cer(language)) for sparsity in sparsities]
    return curves


# ------------------------------------------------------------------------------------------ views


def sweep_view(grid: Grid) -> View:
    """S3-Router at each sparsity against weight fine-tuning, per language (Fig. 2)."""
    view = View("S3-Router against weight fine-tuning (paper Fig. 2)")
    learned = grid.of(S3ROUTER)
    settings = [setting for setting in ordered(run.setting for run in learned)
                if len({run.sparsity for run in learned if run.setting == setting}) >= 2]
    if not settings:
        view.skipped = "no S3-Router setting was run at two or more sparsities"
        return view
    swept = [run for run in learned if run.setting in settings]
    sparsities = sorted({run.sparsity for run in swept})
    languages = ordered(run.language for run in swept)
    for column in ("cer", "wer"):
        rows = [[language, setting_text(*setting), grid.weights_cer(language, column)]
                + [measure(grid.find(S3ROUTER, language, sparsity, setting), column) for sparsity in sparsities]
                for language in languages for setting in settings]
        view.items.append(Table(
            f"{column}_s3router_vs_weights",
            f"{column.upper()} (%) of S3-Router by sparsity, and of weight fine-tuning",
            "S3-Router learns which weights of the frozen pretrained model to drop (`masks`: score initialisation "
            "and masked matrices); the sparsity columns are the fraction removed from each masked matrix. "
            "`weights`: the same model fine-tuned for its weights instead.",
            [Column("language"), Column("masks"), Column("weights", 2)]
            + [Column(sparsity_text(sparsity), 2) for sparsity in sparsities], rows))
    for language in languages:
        series = {f"S3-Router ({setting_text(*setting)})": (S3ROUTER, setting) for setting in settings}
        curves = _curves(grid, language, sparsities, series)
        view.items.append(LinePlot(f"cer_vs_sparsity_{language}", f"{language}: S3-Router against weight fine-tuning",
                                   "Fine-tuning", curves, colours_of(list(curves)), SPARSITY_AXIS, CER_AXIS))
    return view


def ablation_view(grid: Grid, varied: str, heading: str, name: str, title: str, note: str) -> View:
    """S3-Router CER where only `varied` (init or targets) differs, everything else equal (Tables 1, 7)."""
    view = View(heading)
    learned = grid.of(S3ROUTER)
    fixed = [field for field in SETTING_FIELDS if field != varied]

    def group_of(run: Run) -> tuple:
        return (run.language, run.sparsity, *(getattr(run, field) for field in fixed))

    groups = [group for group in ordered(group_of(run) for run in learned)
              if len({getattr(run, varied) for run in learned if group_of(run) == group}) >= 2]
    if not groups:
        view.skipped = f"no S3-Router runs that differ only in their {varied}"
        return view
    values = ordered(getattr(run, varied) for run in learned if group_of(run) in groups)
    if varied == "init":
        values.sort(key=lambda value: INIT_ORDER.index(value) if value in INIT_ORDER else len(INIT_ORDER))
    rows = []
    for language, sparsity, *others in groups:
        coordinates = dict(zip(fixed, others))
        settings = [tuple(value if field == varied else coordinates[field] for field in SETTING_FIELDS)
                    for value in values]
        fixed_text = setting_text(*(coordinates.get(field, "") for field in SETTING_FIELDS))
        rows.append([language, sparsity_text(sparsity), fixed_text, grid.weights_cer(language)]
                    + [measure(grid.find(S3ROUTER, language, sparsity, setting)) for setting in settings])
    view.items = [Table(name, title, note, [Column("language"), Column("sparsity"), Column("fixed"),
                                            Column("weights", 2)] + [Column(value, 2) for value in values], rows)]
    return view


def init_view(grid: Grid) -> View:
    return ablation_view(
        grid, "init", "Score initialisation (paper Table 1)", "init_table",
        "CER (%) of S3-Router by score initialisation",
        "`ri`: random scores; `wmi`: the weights' magnitudes; `ori`: random scores in the order of the magnitudes. "
        "`fixed`: the masked matrices (and layers), the same in every column. `weights`: weight fine-tuning.")


def targets_view(grid: Grid) -> View:
    return ablation_view(
        grid, "targets", "Masked modules (paper Table 7)", "targets_table",
        "CER (%) of S3-Router by the matrices it masks",
        "`ffn`: fc1 and fc2 of every layer; `attn`: q, k, v and out; `all`: both. `fixed`: the score "
        "initialisation (and layers), the same in every column. `weights`: weight fine-tuning.")


def pruning_label(method: str, setting: Tuple[str, str, str]) -> str:
    init, targets, layers = setting
    if method == S3ROUTER_P:
        return f"S3-Router-P ({setting_text(init, targets, layers)})"
    return f"global L1 + fine-tuning ({setting_text('', targets, layers)})"


def pruning_view(grid: Grid) -> View:
    """S3-Router-P against global L1 pruning plus weight fine-tuning on the fine-tuned model (Fig. 4)."""
    view = View("Pruning the fine-tuned model: S3-Router-P against global L1 (paper Fig. 4)")
    runs = grid.of(S3ROUTER_P, GLOBAL_L1)
    if not runs:
        view.skipped = "no S3-Router-P or global L1 cells"
        return view
    series = {pruning_label(method, setting): (method, setting)
              for method, setting in ordered((run.method, run.setting) for run in runs)}
    languages = ordered(run.language for run in runs)
    rows = []
    for language in languages:
        sparsities = sorted({run.sparsity for run in runs if run.language == language})
        rows += [[language, sparsity_text(sparsity)]
                 + [measure(grid.find(method, language, sparsity, setting)) for method, setting in series.values()]
                 + [grid.weights_cer(language)] for sparsity in sparsities]
        curves = _curves(grid, language, sparsities, series)
        view.items.append(LinePlot(f"pruning_{language}", f"{language}: pruning the fine-tuned model", "Method",
                                   curves, colours_of(list(curves)), SPARSITY_AXIS, CER_AXIS))
    table = Table("pruning_table", "CER (%) of the pruned fine-tuned model by sparsity",
                  "Both methods start from the weight-fine-tuned model and train the same number of updates: "
                  "S3-Router-P learns masks on its frozen weights, global L1 prunes by magnitude and fine-tunes "
                  "the remaining weights. `unpruned`: the fine-tuned model itself.",
                  [Column("language"), Column("sparsity")] + [Column(label, 2) for label in series]
                  + [Column("unpruned", 2)], rows)
    view.items.insert(0, table)
    return view


def bundle_view(grid: Grid) -> View:
    """What each language adds to the shared backbone, and its CER decoded from the bundle (Sec. 4.4)."""
    view = View("One backbone, many languages (bundle)")
    runs = grid.of(BUNDLE)
    if not runs:
        view.skipped = "no bundle cells"
        return view
    rows = []
    for run in runs:
        same = MISSING_MARK if run.cer is None or run.own_cer is None else ("yes" if run.cer == run.own_cer else "NO")
        fraction = None if run.backbone_fraction is None else 100 * run.backbone_fraction
        rows.append([run.language, sparsity_text(run.sparsity), setting_text(*run.setting), measure(run, "mask_bytes"),
                     measure(run, "head_bytes"), mean_measure([fraction]), measure(run), measure(run, "own_cer"), same])
    view.items = [Table(
        "bundle_storage", "Storage per language in the bundle, and CER decoded from it",
        "Each language's S3-Router run keeps the pretrained weights, so one backbone serves all of them. Per "
        "language the bundle stores an entropy-coded mask file (`mask_bytes`) and an output layer (`head_bytes`); "
        "`storage_%`: both as a share of the backbone's bytes. `cer`: decoded from the bundle with stock "
        "fairseq-generate; `own_cer`: the language's own run. `same` must be yes.",
        [Column("language"), Column("sparsity"), Column("masks"), Column("mask_bytes", 0), Column("head_bytes", 0),
         Column("storage_%", 2), Column("cer", 2), Column("own_cer", 2), Column("same")], rows)]
    return view


def similarity_view(pairs: Optional[List[Pair]], correlations: Optional[Dict[str, Correlation]],
                    similarity_path: Optional[Path]) -> View:
    """Per-layer cosine similarity of the languages' learned masks, and how it follows the languages'
    similarity (Sec. 4.5, Fig. 6)."""
    view = View("Similarity of the languages' learned masks (paper Sec. 4.5, Fig. 6)")
    if pairs is None:
        view.skipped = f"no {SIMILARITY_FILE} beside {RESULTS_FILE}"
        return view
    if not pairs:
        view.skipped = f"{similarity_path} has no pairs"
        return view
    layers = ordered(pair.layer for pair in pairs)
    languages = ordered(language for pair in pairs for language in (pair.a, pair.b))
    cosine = {(pair.layer, a, b): pair.mask_cosine for pair in pairs for a, b in ((pair.a, pair.b), (pair.b, pair.a))}
    given = {(a, b): pair.language_similarity for pair in pairs for a, b in ((pair.a, pair.b), (pair.b, pair.a))
             if pair.language_similarity is not None}
    names = ordered(tuple(sorted((pair.a, pair.b), key=languages.index)) for pair in pairs)
    view.items.append(Table(
        "mask_similarity", "Cosine similarity of the learned masks per layer, and the languages' similarity",
        "Masks as 0/1 vectors (1: kept); `all layers`: every masked matrix together. `language similarity`: "
        "the grid's matrix.",
        [Column("pair")] + [Column(layer_text(layer), 3) for layer in layers] + [Column("language similarity", 3)],
        [[f"{a}-{b}"] + [mean_measure([cosine.get((layer, a, b))]) for layer in layers]
         + [mean_measure([given.get((a, b))])] for a, b in names]))
    if correlations:
        view.items.append(Table(
            "mask_similarity_correlation", "Correlation of mask similarity with language similarity per layer",
            f"Over the pairs of languages (each pair once); `{MISSING_MARK}`: undefined, one side is constant.",
            [Column("layer"), Column("pearson", 3), Column("spearman", 3), Column("pairs", 0)],
            [[layer_text(layer), mean_measure([found.pearson]), mean_measure([found.spearman]), Measure(found.pairs)]
             for layer, found in correlations.items()]))
    for layer in layers:
        matrix = [[1.0 if a == b else cosine.get((layer, a, b)) for b in languages] for a in languages]
        view.items.append(Heatmap(f"mask_similarity_{layer}",
                                  f"Cosine similarity of learned masks, {layer_text(layer)}", languages, matrix,
                                  "Cosine similarity", "Language"))
    if given:
        view.items.append(Heatmap("language_similarity", "Language similarity (the grid's matrix, diagonal unused)",
                                  languages,
                                  [[given.get((a, b)) for b in languages] for a in languages],
                                  "Language similarity", "Language"))

        def label(layer: str) -> str:
            found = (correlations or {}).get(layer)
            if found is None:
                return layer_text(layer)
            numbers = [f"{name}={MISSING_MARK if value is None else f'{value:.2f}'}"
                       for name, value in (("r", found.pearson), ("rho", found.spearman))]
            return f"{layer_text(layer)} ({', '.join(numbers)})"

        series = {label(layer): [(given.get((a, b)), cosine.get((layer, a, b)), f"{a}-{b}") for a, b in names]
                  for layer in layers}
        view.items.append(ScatterPlot("mask_vs_language_similarity", "Mask similarity against language similarity",
                                      "Layer (Pearson r, Spearman rho)", series, colours_of(list(series)),
                                      "Language similarity", "Cosine similarity of learned masks"))
    return view


def build_views(grid: Grid, pairs, correlations, similarity_path) -> List[View]:
    return [sweep_view(grid), init_view(grid), targets_view(grid), pruning_view(grid), bundle_view(grid),
            similarity_view(pairs, correlations, similarity_path)]


def write_report(results, out_dir) -> List[Path]:
    """Reads RESULTS (a grid folder or its results.csv), writes every view into out_dir and report.md;
    returns the files written, report.md last."""
    results_path, similarity_path, correlation_path = locate_results(results, [SIMILARITY_FILE, CORRELATION_FILE])
    grid = Grid(read_results(results_path))
    pairs = read_similarity(similarity_path) if similarity_path else None
    correlations = read_correlations(correlation_path) if correlation_path else None
    return write_views(out_dir, "S3-Router report", [*status_lines(grid.runs, results_path), "", LEGEND],
                       build_views(grid, pairs, correlations, similarity_path), LEGEND)
