"""The views of a language-subnetwork grid, laid out like Storey, Harte & Bell (2025).

Input: the grid's `results.csv` (one row per configuration and seed) and optionally `iou.csv` (IOU of
kept weights between two subnetworks at a sparsity). Output: Markdown and CSV tables, PNG figures and
a `report.md` that shows them in order, built from the engine's report blocks. A configuration whose
CER is empty (not finished, failed) or that is absent from results.csv is shown as missing, never as
zero; means carry how many of the parts they should average are present.
"""
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ...engine.report import (
    ABSENT, MISSING_MARK, Column, Heatmap, LinePlot, Measure, ResultsError, Table, View, bounded_field, choice_field,
    locate_results, mean_measure, nonempty_field, number_field, ordered, read_rows, sparsity_text, status_lines,
    write_views,
)
from ...engine.results import RESULTS_CSV as RESULTS_FILE
from .cells import IOU_COLUMNS, IOU_FILE, REPORTED_COLUMNS
from .spec import SOURCES as MASK_SOURCES

STAGES = ("upstream", "downstream")
SOURCES = (*MASK_SOURCES, "none")
"""A row's `source`: a mask source of the grid, or none for an upstream model."""
IOU_TOLERANCE = 1e-6
SPARSITY_AXIS = "Sparsity (%)"
CER_AXIS = "CER (%)"


# ------------------------------------------------------------------------------------------ input


@dataclass(frozen=True)
class Run:
    """One row of results.csv: one configuration trained and decoded with one seed.

    Normalised so that views need no special cases: an own-subnetwork or unpruned downstream run has
    source "own" and mask = its upstream language (the unpruned run is the 0% point of the own
    curves, Fig. 2); base and random runs have mask "base" / "random" when mask_language is empty.
    """
    line: int
    cell: str
    stage: str
    upstream: str
    downstream: str
    sparsity: float
    source: str
    mask: str
    seed: int
    cer: Optional[float]
    wer: Optional[float]
    mask_sparsity: Optional[float]

    @property
    def configuration(self) -> tuple:
        return self.stage, self.source, self.upstream, self.mask, self.downstream, self.sparsity


def _run_from_fields(fields: Dict[str, str], path: Path, line: int) -> Run:
    where = f"{path}:{line}"
    stage = choice_field(fields, "stage", where, STAGES)
    source = choice_field(fields, "source", where, SOURCES)
    upstream = nonempty_field(fields, "upstream", where, "every cell names its upstream model")
    sparsity = bounded_field(fields, "sparsity", where, 0.0, 1.0, high_included=False)
    try:
        seed = int(fields["seed"])
    except ValueError:
        raise ResultsError(f"{where}: column seed: {fields['seed']!r} is not an integer") from None
    downstream, mask = fields["downstream"], fields["mask_language"]
    if stage == "downstream":
        downstream = nonempty_field(fields, "downstream", where, "a downstream cell names its language")
        if source == "none" and sparsity != 0:
            raise ResultsError(f"{where}: column source: 'none' (no mask) with sparsity {sparsity:g}")
        if source in ("own", "none"):
            source, mask = "own", upstream
        elif source in ("swap", "union"):
            mask = nonempty_field(fields, "mask_language", where, f"a {source} cell names its subnetwork")
        else:
            mask = mask or source
    cer, wer = number_field(fields, "cer", where), number_field(fields, "wer", where)
    for column, value in (("cer", cer), ("wer", wer)):
        if value is not None and value < 0:
            raise ResultsError(f"{where}: column {column}: {value:g} is negative")
    mask_sparsity = None
    if fields["mask_sparsity"]:
        mask_sparsity = bounded_field(fields, "mask_sparsity", where, 0.0, 1.0, high_included=True)
    return Run(line, fields["cell"], stage, upstream, downstream, sparsity, source, mask, seed, cer, wer,
               mask_sparsity)


def read_results(path) -> List[Run]:
    """Every row of results.csv, validated; one seed of a configuration may appear only once."""
    path, runs, seen = Path(path), [], {}
    for line, fields in read_rows(path, REPORTED_COLUMNS):
        run = _run_from_fields(fields, path, line)
        key = run.configuration + (run.seed,)
        if key in seen:
            raise ResultsError(f"{path}:{line}: column seed: seed {run.seed} of this configuration is already on "
                               f"line {seen[key]}")
        seen[key] = run.line
        runs.append(run)
    return runs


def read_iou(path) -> Dict[float, Dict[Tuple[str, str], float]]:
    """sparsity -> {(a, b): IOU fraction}, both directions, and (a, a) -> 1.0 for every label named at
    that sparsity (the diagonal is 1 by definition). An empty iou field names its labels but no value."""
    path = Path(path)
    matrices: Dict[float, Dict[Tuple[str, str], float]] = defaultdict(dict)
    origin: Dict[Tuple[float, str, str], int] = {}
    for line, fields in read_rows(path, IOU_COLUMNS):
        where = f"{path}:{line}"
        sparsity = bounded_field(fields, "sparsity", where, 0.0, 1.0, high_included=False)
        a = nonempty_field(fields, "a", where, "a subnetwork label")
        b = nonempty_field(fields, "b", where, "a subnetwork label")
        pairs = matrices[sparsity]
        pairs[a, a] = pairs[b, b] = 1.0
        if a == b or not fields["iou"]:
            continue
        value = bounded_field(fields, "iou", where, 0.0, 1.0, high_included=True)
        if (a, b) in pairs and abs(pairs[a, b] - value) > IOU_TOLERANCE:
            raise ResultsError(f"{where}: column iou: {value:g} contradicts {pairs[a, b]:g} for the same pair "
                               f"on line {origin[sparsity, a, b]}")
        pairs[a, b] = pairs[b, a] = value
        origin[sparsity, a, b] = origin[sparsity, b, a] = line
    return dict(matrices)

# ----------------------------------------------------------------------------------------- values


class Grid:
    """The runs grouped by configuration, so each view asks for a seed-averaged CER by coordinates."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = list(runs)
        self.by_configuration: Dict[tuple, List[Run]] = defaultdict(list)
        for run in self.runs:
            self.by_configuration[run.configuration].append(run)
        self.own = [run for run in self.runs if run.stage == "downstream" and run.source == "own"]
        order = ordered(code for run in self.runs for code in (run.upstream, run.downstream) if code)
        self.rank = {code: position for position, code in enumerate(order)}
        self.colours = {code: f"C{position % 10}" for code, position in self.rank.items()}
        self.own_upstreams = self.in_order(run.upstream for run in self.own)
        self.own_downstreams = self.in_order(run.downstream for run in self.own)

    def in_order(self, codes: Iterable[str]) -> List[str]:
        """Distinct language codes in the order they first appear in results.csv."""
        return sorted(set(codes), key=self.rank.__getitem__)

    def cer(self, source: str, upstream: str, mask: str, downstream: str, sparsity: float) -> Measure:
        runs = self.by_configuration.get(("downstream", source, upstream, mask, downstream, sparsity))
        return mean_measure(run.cer for run in runs) if runs else ABSENT

    def own_cer(self, upstream: str, downstream: str, sparsity: float) -> Measure:
        return self.cer("own", upstream, upstream, downstream, sparsity)


def _seed_columns(languages: Sequence[str]) -> List[Column]:
    return [Column(language, 2, (f"{language}_seeds",)) for language in languages]


MEAN_COLUMN = Column("mean_cer", 2, ("n", "expected"))
NO_OWN_CELLS = "no downstream cells with the upstream model's own subnetwork"
LEGEND = ("CER values are means over seeds (their number: the CSV's `LANGUAGE_seeds` or `seeds` columns). "
          "`(k/m)` after a value: only k of its m parts (seeds, or languages for a mean) have a result. "
          f"`{MISSING_MARK}` (an empty CSV field): no result, never zero.")


# ------------------------------------------------------------------------------------------ views


def main_view(grid: Grid) -> View:
    """CER per upstream subnetwork, sparsity and downstream language (Fig. 2-4)."""
    view = View("Own subnetworks on each downstream language (paper Fig. 2-4)")
    if not grid.own:
        view.skipped = NO_OWN_CELLS
        return view
    rows, plots = [], []
    for upstream in grid.own_upstreams:
        sparsities = sorted({run.sparsity for run in grid.own if run.upstream == upstream})
        cers = {(language, sparsity): grid.own_cer(upstream, language, sparsity)
                for language in grid.own_downstreams for sparsity in sparsities}
        rows += [[upstream, sparsity_text(sparsity)] + [cers[language, sparsity] for language in grid.own_downstreams]
                 for sparsity in sparsities]
        plots.append(LinePlot(
            f"cer_vs_sparsity_{upstream}", f"Upstream {upstream} subnetwork: CER vs sparsity", "Downstream language",
            {language: [(100 * sparsity, cers[language, sparsity]) for sparsity in sparsities]
             for language in grid.own_downstreams}, grid.colours, SPARSITY_AXIS, CER_AXIS))
    table = Table("cer_by_sparsity", "CER (%) by upstream subnetwork and sparsity",
                  "Each upstream model pruned with its own subnetwork, then fine-tuned on each downstream "
                  "language (columns); sparsity 0 is the unpruned model.",
                  [Column("upstream"), Column("sparsity")] + _seed_columns(grid.own_downstreams), rows)
    view.items = [table] + plots
    return view


def _mean_view(grid: Grid, heading: str, name: str, group_header: str, title: str, note: str, legend_title: str,
               by_downstream: bool) -> View:
    """Mean own-subnetwork CER per group (upstream subnetwork, or downstream language) and sparsity over
    the languages on the other side that are not the group's own language."""
    view = View(heading)
    if not grid.own:
        view.skipped = NO_OWN_CELLS
        return view
    groups, others = ((grid.own_downstreams, grid.own_upstreams) if by_downstream
                      else (grid.own_upstreams, grid.own_downstreams))

    def cer(group: str, other: str, sparsity: float) -> Measure:
        return grid.own_cer(other, group, sparsity) if by_downstream else grid.own_cer(group, other, sparsity)

    rows, series = [], {}
    for group in groups:
        sparsities = sorted({run.sparsity for run in grid.own
                             if (run.downstream if by_downstream else run.upstream) == group})
        means = [mean_measure(cer(group, other, sparsity).value for other in others if other != group)
                 for sparsity in sparsities]
        series[group] = [(100 * sparsity, mean) for sparsity, mean in zip(sparsities, means)]
        rows += [[group, sparsity_text(sparsity), mean] for sparsity, mean in zip(sparsities, means)]
    table = Table(name, title, note, [Column(group_header), Column("sparsity"), MEAN_COLUMN], rows)
    view.items = [table, LinePlot(name, title, legend_title, series, grid.colours, SPARSITY_AXIS, CER_AXIS)]
    return view


def mean_by_subnet_view(grid: Grid) -> View:
    """How well each language subnetwork transfers to the other languages (Fig. 5)."""
    return _mean_view(
        grid, heading="Transfer of each subnetwork to the other languages (paper Fig. 5)",
        name="mean_cer_by_subnet", group_header="subnet",
        title="Mean CER (%) of each subnetwork on the other languages",
        note="Mean over the downstream languages other than the subnetwork's own; `n` of `expected` "
        "languages have a result.", legend_title="Upstream subnetwork", by_downstream=False)


def mean_by_downstream_view(grid: Grid) -> View:
    """How hard each downstream language is for the other languages' subnetworks (Fig. 6)."""
    return _mean_view(
        grid, heading="Each downstream language from the other subnetworks (paper Fig. 6)",
        name="mean_cer_by_downstream", group_header="downstream",
        title="Mean CER (%) of each downstream language from the other subnetworks",
        note="Mean over the upstream subnetworks of the other languages; `n` of `expected` upstream models "
        "have a result.", legend_title="Downstream language", by_downstream=True)


def _mask_sparsity(grid: Grid, source: str, upstream: str, mask: str, sparsity: float) -> Measure:
    """The applied mask's actual sparsity (one mask per model, whatever the downstream language)."""
    values = [run.mask_sparsity for run in grid.runs if run.stage == "downstream" and run.source == source
              and run.upstream == upstream and run.mask == mask and run.sparsity == sparsity
              and run.mask_sparsity is not None]
    return Measure(fmean(values)) if values else ABSENT


def _mask_comparison_view(grid: Grid, heading: str, sources: Sequence[str], name: str, title: str, note: str,
                          separator: str, skipped: str) -> View:
    """Models pruned with other masks (rows `model<separator>mask`) beside the same models with their own
    subnetwork, at each sparsity where such cells exist (Tables 2 and 3)."""
    view = View(heading)
    cells = [run for run in grid.runs if run.stage == "downstream" and run.source in sources]
    if not cells:
        view.skipped = skipped
        return view
    languages = grid.in_order(run.downstream for run in cells)
    rows = []
    for sparsity in sorted({run.sparsity for run in cells}):
        at_sparsity = [run for run in cells if run.sparsity == sparsity]
        for upstream in grid.in_order(run.upstream for run in at_sparsity):
            masks = [("own", upstream)] + list(dict.fromkeys(
                (run.source, run.mask) for run in at_sparsity if run.upstream == upstream))
            for source, mask in masks:
                cers = [grid.cer(source, upstream, mask, language, sparsity) for language in languages]
                rows.append([sparsity_text(sparsity), f"{upstream}{separator}{mask}",
                             _mask_sparsity(grid, source, upstream, mask, sparsity)]
                            + cers + [mean_measure(cer.value for cer in cers)])
    columns = ([Column("sparsity"), Column("model/subnet"), Column("mask_sparsity", 4)]
               + _seed_columns(languages) + [MEAN_COLUMN])
    view.items = [Table(name, title, note + " `mask_sparsity`: the fraction of weights the applied mask "
                        "actually prunes. `mean_cer`: over this table's languages.", columns, rows)]
    return view


def swap_view(grid: Grid) -> View:
    return _mask_comparison_view(
        grid, heading="Exchanged subnetworks (paper Table 3)", sources=("swap",), name="swap_table",
        title="CER (%) with exchanged subnetworks",
        note="`en / es`: the English fine-tuned model pruned with the Spanish subnetwork; `en / en`: with its "
        "own subnetwork, for comparison.",
        separator=" / ", skipped="no swap cells (a model pruned with another language's subnetwork)")


def union_view(grid: Grid) -> View:
    return _mask_comparison_view(
        grid, heading="Union of two subnetworks (paper Table 2)", sources=("union",), name="union_table",
        title="CER (%) with the union of two subnetworks",
        note="`en: en+es`: the English fine-tuned model pruned with the union of the English and Spanish "
        "subnetworks; `en: en`: with its own subnetwork, for comparison.",
        separator=": ", skipped="no union cells")


def control_view(grid: Grid) -> View:
    return _mask_comparison_view(
        grid, heading="Control masks: pretrained-model subnetwork and random", sources=("base", "random"),
        name="control_table", title="CER (%) with control masks",
        note="`en / base`: the English fine-tuned model pruned with the subnetwork of the pretrained model "
        "before fine-tuning; `en / random`: with a random mask of the same sparsity; `en / en`: with its own "
        "subnetwork, for comparison.",
        separator=" / ", skipped="no base or random mask cells")


def upstream_view(grid: Grid) -> View:
    """The fine-tuned upstream models on their own language, before any pruning."""
    view = View("Upstream models before pruning")
    runs = [run for run in grid.runs if run.stage == "upstream"]
    if not runs:
        view.skipped = "no upstream cells"
        return view
    rows = []
    for upstream in grid.in_order(run.upstream for run in runs):
        own = [run for run in runs if run.upstream == upstream]
        rows.append([upstream, mean_measure(run.cer for run in own), mean_measure(run.wer for run in own)])
    view.items = [Table("upstream", "CER and WER (%) of the fine-tuned upstream models",
                        "Each upstream model on its own language's test set, unpruned.",
                        [Column("upstream"), Column("cer", 2, ("seeds",)), Column("wer", 2)], rows)]
    return view


def iou_view(iou: Optional[Dict[float, Dict[Tuple[str, str], float]]], iou_path: Path) -> View:
    """Overlap of kept weights between subnetworks per sparsity (Fig. 7 and 8)."""
    view = View("Overlap of subnetworks (paper Fig. 7, 8)")
    if iou is None:
        view.skipped = f"no {IOU_FILE} beside {RESULTS_FILE}"
        return view
    if not iou:
        view.skipped = f"{iou_path} has no IOU values"
        return view
    for sparsity in sorted(iou):
        pairs = iou[sparsity]
        labels = ordered(a for a, _ in pairs)
        labels.sort(key=lambda label: label == "base")
        matrix = [[pairs.get((a, b)) for b in labels] for a in labels]
        name = f"iou_{sparsity_text(sparsity)}"
        title = f"IOU (%) of kept weights at {sparsity_text(sparsity)} sparsity"
        table = Table(name, title, f"Symmetric; the diagonal is 100 by definition; `{MISSING_MARK}`: pair not "
                      "computed. `base`: the subnetwork of the pretrained model before fine-tuning.",
                      [Column("subnet")] + [Column(label, 2) for label in labels],
                      [[a] + [ABSENT if value is None else Measure(100 * value) for value in row]
                       for a, row in zip(labels, matrix)])
        percent = [[None if value is None else 100 * value for value in row] for row in matrix]
        view.items += [table, Heatmap(name, title, labels, percent, "IOU of kept weights (%)", "Subnetwork")]
    return view


def build_views(grid: Grid, iou, iou_path: Optional[Path]) -> List[View]:
    return [main_view(grid), mean_by_subnet_view(grid), mean_by_downstream_view(grid), swap_view(grid),
            union_view(grid), control_view(grid), upstream_view(grid), iou_view(iou, iou_path)]


def write_report(results, out_dir) -> List[Path]:
    """Reads RESULTS (a grid folder or its results.csv), writes every view into out_dir and report.md;
    returns the files written, report.md last."""
    results_path, iou_path = locate_results(results, [IOU_FILE])
    grid = Grid(read_results(results_path))
    iou = read_iou(iou_path) if iou_path else None
    return write_views(out_dir, "Language subnetwork report", [*status_lines(grid.runs, results_path), "", LEGEND],
                       build_views(grid, iou, iou_path), LEGEND)
