"""Tables and figures of a language-subnetwork grid, laid out like Storey, Harte & Bell (2025).

Input: the grid's `results.csv` (one row per configuration and seed) and optionally `iou.csv` (IOU of
kept weights between two subnetworks at a sparsity). Output: Markdown and CSV tables, PNG figures and
a `report.md` that shows them in order. A configuration whose CER is empty (not finished, failed) or
that is absent from results.csv is shown as missing (`–` in Markdown, an empty CSV field, a gap in a
line plot, grey "n/a" in a heatmap), never as zero. Means carry how many of the parts they should
average are present, so an incomplete mean is visible.

Pure Python and matplotlib (its object API, which draws headless without pyplot's global state);
no torch or fairseq, so reporting works anywhere the results files are.
"""
import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import matplotlib
import numpy
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .atomic import atomic_path, write_atomically

RESULTS_FILE = "results.csv"
IOU_FILE = "iou.csv"
REPORT_FILE = "report.md"
STAGES = ("upstream", "downstream")
SOURCES = ("own", "swap", "union", "base", "random", "none")
RESULT_COLUMNS = ("cell", "stage", "upstream", "downstream", "sparsity", "source", "mask_language", "seed",
                  "cer", "wer", "mask_sparsity")
IOU_COLUMNS = ("sparsity", "a", "b", "iou")
MISSING_MARK = "–"
IOU_TOLERANCE = 1e-6


class ResultsError(ValueError):
    """A problem in the results files the user can fix; the message names file, line and column."""


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


def locate_inputs(results) -> Tuple[Path, Optional[Path]]:
    """RESULTS (a grid folder or its results.csv) -> (results.csv, iou.csv beside it or None)."""
    path = Path(results)
    if path.is_dir():
        results_path = path / RESULTS_FILE
        if not results_path.is_file():
            raise ResultsError(f"{path}: no {RESULTS_FILE} in this folder")
    elif path.is_file():
        results_path = path
    else:
        raise ResultsError(f"{path}: no such file or folder")
    iou_path = results_path.with_name(IOU_FILE)
    return results_path, iou_path if iou_path.is_file() else None


def _read_rows(path: Path, required: Sequence[str]) -> List[Tuple[int, Dict[str, str]]]:
    """(line number, the required fields stripped) per data row; unknown columns are ignored."""
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None:
            raise ResultsError(f"{path}: empty file, expected a header row with {', '.join(required)}")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        missing = [name for name in required if name not in reader.fieldnames]
        if missing:
            raise ResultsError(f"{path}:1: missing column {', '.join(missing)} (required: {', '.join(required)})")
        return [(reader.line_num, {name: (row.get(name) or "").strip() for name in required}) for row in reader]


def _number(fields: Dict[str, str], column: str, where: str) -> Optional[float]:
    """A finite float, or None for an empty field (missing, never zero)."""
    text = fields[column]
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ResultsError(f"{where}: column {column}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ResultsError(f"{where}: column {column}: {text!r} is not a finite number")
    return value


def _required_number(fields: Dict[str, str], column: str, where: str, low: float, high: float,
                     high_included: bool) -> float:
    value = _number(fields, column, where)
    if value is None:
        raise ResultsError(f"{where}: column {column}: empty")
    if not (low <= value <= high if high_included else low <= value < high):
        interval = f"[{low:g}, {high:g}{']' if high_included else ')'}"
        raise ResultsError(f"{where}: column {column}: {value:g} is outside {interval}")
    return value


def _choice(fields: Dict[str, str], column: str, where: str, choices: Sequence[str]) -> str:
    if fields[column] not in choices:
        raise ResultsError(f"{where}: column {column}: unknown value {fields[column]!r} "
                           f"(expected one of {', '.join(choices)})")
    return fields[column]


def _nonempty(fields: Dict[str, str], column: str, where: str, why: str) -> str:
    if not fields[column]:
        raise ResultsError(f"{where}: column {column}: empty ({why})")
    return fields[column]


def _run_from_fields(fields: Dict[str, str], path: Path, line: int) -> Run:
    where = f"{path}:{line}"
    stage = _choice(fields, "stage", where, STAGES)
    source = _choice(fields, "source", where, SOURCES)
    upstream = _nonempty(fields, "upstream", where, "every cell names its upstream model")
    sparsity = _required_number(fields, "sparsity", where, 0.0, 1.0, high_included=False)
    try:
        seed = int(fields["seed"])
    except ValueError:
        raise ResultsError(f"{where}: column seed: {fields['seed']!r} is not an integer") from None
    downstream, mask = fields["downstream"], fields["mask_language"]
    if stage == "downstream":
        downstream = _nonempty(fields, "downstream", where, "a downstream cell names its language")
        if source == "none" and sparsity != 0:
            raise ResultsError(f"{where}: column source: 'none' (no mask) with sparsity {sparsity:g}")
        if source in ("own", "none"):
            source, mask = "own", upstream
        elif source in ("swap", "union"):
            mask = _nonempty(fields, "mask_language", where, f"a {source} cell names its subnetwork")
        else:
            mask = mask or source
    cer, wer = _number(fields, "cer", where), _number(fields, "wer", where)
    for column, value in (("cer", cer), ("wer", wer)):
        if value is not None and value < 0:
            raise ResultsError(f"{where}: column {column}: {value:g} is negative")
    mask_sparsity = None
    if fields["mask_sparsity"]:
        mask_sparsity = _required_number(fields, "mask_sparsity", where, 0.0, 1.0, high_included=True)
    return Run(line, fields["cell"], stage, upstream, downstream, sparsity, source, mask, seed, cer, wer,
               mask_sparsity)


def read_results(path) -> List[Run]:
    """Every row of results.csv, validated; one seed of a configuration may appear only once."""
    path, runs, seen = Path(path), [], {}
    for line, fields in _read_rows(path, RESULT_COLUMNS):
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
    for line, fields in _read_rows(path, IOU_COLUMNS):
        where = f"{path}:{line}"
        sparsity = _required_number(fields, "sparsity", where, 0.0, 1.0, high_included=False)
        a = _nonempty(fields, "a", where, "a subnetwork label")
        b = _nonempty(fields, "b", where, "a subnetwork label")
        pairs = matrices[sparsity]
        pairs[a, a] = pairs[b, b] = 1.0
        if a == b or not fields["iou"]:
            continue
        value = _required_number(fields, "iou", where, 0.0, 1.0, high_included=True)
        if (a, b) in pairs and abs(pairs[a, b] - value) > IOU_TOLERANCE:
            raise ResultsError(f"{where}: column iou: {value:g} contradicts {pairs[a, b]:g} for the same pair "
                               f"on line {origin[sparsity, a, b]}")
        pairs[a, b] = pairs[b, a] = value
        origin[sparsity, a, b] = origin[sparsity, b, a] = line
    return dict(matrices)


# ----------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Measure:
    """A number that is a mean over `count` of the `expected` parts (seeds or languages); None when
    no part is present."""
    value: Optional[float]
    count: int = 1
    expected: int = 1

    @property
    def incomplete(self) -> bool:
        return self.count < self.expected


ABSENT = Measure(None, 0, 0)


def mean_measure(values: Iterable[Optional[float]]) -> Measure:
    """The mean of the values that are present, counted against all of them."""
    values = list(values)
    present = [value for value in values if value is not None]
    return Measure(fmean(present) if present else None, len(present), len(values))


def _ordered(items: Iterable[str]) -> List[str]:
    """Distinct items in order of first appearance (the grid's own order)."""
    return list(dict.fromkeys(items))


def sparsity_text(sparsity: float) -> str:
    return f"{sparsity:g}"


class Grid:
    """The runs grouped by configuration, so each view asks for a seed-averaged CER by coordinates."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = list(runs)
        self.by_configuration: Dict[tuple, List[Run]] = defaultdict(list)
        for run in self.runs:
            self.by_configuration[run.configuration].append(run)
        self.own = [run for run in self.runs if run.stage == "downstream" and run.source == "own"]
        order = _ordered(code for run in self.runs for code in (run.upstream, run.downstream) if code)
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


# ----------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """A table column. Text columns hold str, number columns hold Measure; `count_headers` names the
    CSV columns that carry a Measure's count and expected count (Markdown marks `(count/expected)`)."""
    header: str
    decimals: Optional[int] = None
    count_headers: Tuple[str, ...] = ()


@dataclass
class Table:
    name: str
    title: str
    note: str
    columns: List[Column]
    rows: List[List[Union[str, Measure]]]


def _number_text(measure: Measure, decimals: int) -> str:
    return "" if measure.value is None else f"{measure.value:.{decimals}f}"


def _markdown_cell(value, column: Column) -> str:
    if column.decimals is None:
        return value
    if value.value is None:
        return MISSING_MARK
    mark = f" ({value.count}/{value.expected})" if value.incomplete else ""
    return _number_text(value, column.decimals) + mark


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(column.header for column in table.columns) + " |",
             "|" + "|".join("---" if column.decimals is None else "---:" for column in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_markdown_cell(value, column)
                                       for value, column in zip(row, table.columns)) + " |")
    return "\n".join(lines)


def csv_text(table: Table) -> str:
    """The table as CSV: missing numbers are empty fields, counts get their own columns."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([header for column in table.columns for header in (column.header, *column.count_headers)])
    for row in table.rows:
        fields = []
        for value, column in zip(row, table.columns):
            if column.decimals is None:
                fields.append(value)
                continue
            fields.append(_number_text(value, column.decimals))
            fields.extend(str(count) for count in (value.count, value.expected)[:len(column.count_headers)])
        writer.writerow(fields)
    return stream.getvalue()


def _seed_columns(languages: Sequence[str]) -> List[Column]:
    return [Column(language, 2, (f"{language}_seeds",)) for language in languages]


MEAN_COLUMN = Column("mean_cer", 2, ("n", "expected"))
NO_OWN_CELLS = "no downstream cells with the upstream model's own subnetwork"
LEGEND = ("CER values are means over seeds (their number: the CSV's `LANGUAGE_seeds` or `seeds` columns). "
          "`(k/m)` after a value: only k of its m parts (seeds, or languages for a mean) have a result. "
          f"`{MISSING_MARK}` (an empty CSV field): no result, never zero.")


# ------------------------------------------------------------------------------------------ plots


@dataclass
class LinePlot:
    """CER against sparsity, one line per language; a missing point is a gap, an incomplete one is hollow.
    A language keeps its colour in every plot."""
    name: str
    title: str
    legend_title: str
    series: Dict[str, List[Tuple[float, Measure]]]
    colours: Dict[str, str]

    def draw(self, figure: Figure) -> None:
        axes = figure.subplots()
        any_incomplete = False
        for label, points in self.series.items():
            xs = [100 * sparsity for sparsity, _ in points]
            ys = [math.nan if measure.value is None else measure.value for _, measure in points]
            colour = self.colours[label]
            axes.plot(xs, ys, marker="o", color=colour, label=label)
            hollow = [(x, y) for x, y, (_, measure) in zip(xs, ys, points)
                      if measure.value is not None and measure.incomplete]
            if hollow:
                any_incomplete = True
                axes.plot(*zip(*hollow), linestyle="none", marker="o", color=colour, markerfacecolor="white")
        handles, labels = axes.get_legend_handles_labels()
        if any_incomplete:
            handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                                  markeredgecolor="grey"))
            labels.append("incomplete (k of m)")
        axes.legend(handles, labels, title=self.legend_title)
        axes.set_title(self.title)
        axes.set_xticks(sorted({100 * sparsity for points in self.series.values() for sparsity, _ in points}))
        axes.set_xlabel("Sparsity (%)")
        axes.set_ylabel("CER (%)")
        axes.grid(True, alpha=0.3)


@dataclass
class Heatmap:
    """A symmetric IOU matrix in percent, the value written in each cell; a missing pair is grey n/a."""
    name: str
    title: str
    labels: List[str]
    matrix: List[List[Optional[float]]]

    def draw(self, figure: Figure) -> None:
        percent = numpy.array([[math.nan if value is None else 100 * value for value in row]
                               for row in self.matrix])
        colormap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
        axes = figure.subplots()
        image = axes.imshow(numpy.ma.masked_invalid(percent), cmap=colormap)
        ticks = range(len(self.labels))
        axes.set_xticks(ticks, self.labels)
        axes.set_yticks(ticks, self.labels)
        for i in ticks:
            for j in ticks:
                value = percent[i, j]
                missing = math.isnan(value)
                colour = "black" if missing or image.norm(value) > 0.5 else "white"
                axes.text(j, i, "n/a" if missing else f"{value:.2f}", ha="center", va="center", color=colour)
        figure.colorbar(image, ax=axes, label="IOU of kept weights (%)")
        axes.set_title(self.title)
        axes.set_xlabel("Subnetwork")
        axes.set_ylabel("Subnetwork")


# ------------------------------------------------------------------------------------------ views


@dataclass
class View:
    """One part of the report: tables and plots in display order, or why it was skipped."""
    title: str
    items: List[Union[Table, LinePlot, Heatmap]] = field(default_factory=list)
    skipped: str = ""


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
            {language: [(sparsity, cers[language, sparsity]) for sparsity in sparsities]
             for language in grid.own_downstreams}, grid.colours))
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
        series[group] = [(sparsity, mean_measure(cer(group, other, sparsity).value
                                                 for other in others if other != group))
                         for sparsity in sparsities]
        rows += [[group, sparsity_text(sparsity), mean] for sparsity, mean in series[group]]
    table = Table(name, title, note, [Column(group_header), Column("sparsity"), MEAN_COLUMN], rows)
    view.items = [table, LinePlot(name, title, legend_title, series, grid.colours)]
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
        labels = _ordered(a for a, _ in pairs)
        labels.sort(key=lambda label: label == "base")
        matrix = [[pairs.get((a, b)) for b in labels] for a in labels]
        name = f"iou_{sparsity_text(sparsity)}"
        title = f"IOU (%) of kept weights at {sparsity_text(sparsity)} sparsity"
        table = Table(name, title, f"Symmetric; the diagonal is 100 by definition; `{MISSING_MARK}`: pair not "
                      "computed. `base`: the subnetwork of the pretrained model before fine-tuning.",
                      [Column("subnet")] + [Column(label, 2) for label in labels],
                      [[a] + [ABSENT if value is None else Measure(100 * value) for value in row]
                       for a, row in zip(labels, matrix)])
        view.items += [table, Heatmap(name, title, labels, matrix)]
    return view


def build_views(grid: Grid, iou, iou_path: Optional[Path]) -> List[View]:
    return [main_view(grid), mean_by_subnet_view(grid), mean_by_downstream_view(grid), swap_view(grid),
            union_view(grid), control_view(grid), upstream_view(grid), iou_view(iou, iou_path)]


# ----------------------------------------------------------------------------------------- output


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, text.encode("utf-8"))


def _write_table(out_dir: Path, table: Table) -> List[Path]:
    """NAME.md (title, note, the legend where values carry counts, the table) and NAME.csv."""
    legend = f" {LEGEND}" if any(column.count_headers for column in table.columns) else ""
    markdown, comma_separated = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
    _write_text(markdown, f"# {table.title}\n\n{table.note}{legend}\n\n{markdown_table(table)}\n")
    _write_text(comma_separated, csv_text(table))
    return [markdown, comma_separated]


def _write_plot(out_dir: Path, plot: Union[LinePlot, Heatmap]) -> Path:
    size = (7, 4.5) if isinstance(plot, LinePlot) else (1.3 * len(plot.labels) + 3, 1.1 * len(plot.labels) + 1.5)
    figure = Figure(figsize=size, layout="constrained")
    plot.draw(figure)
    path = out_dir / f"{plot.name}.png"
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return path


def _status_lines(grid: Grid, results_path: Path) -> List[str]:
    unfinished = [run for run in grid.runs if run.cer is None]
    lines = [f"{len(grid.runs) - len(unfinished)} of {len(grid.runs)} cells in `{results_path}` have a CER; "
             f"{len(unfinished)} not finished (empty CER). Cells absent from the file cannot be counted here."]
    if unfinished:
        lines.append("Not finished: " + ", ".join(run.cell or f"line {run.line}" for run in unfinished) + ".")
    return lines


def write_report(results, out_dir) -> List[Path]:
    """Reads RESULTS (a grid folder or its results.csv), writes every view into out_dir and report.md;
    returns the files written, report.md last."""
    results_path, iou_path = locate_inputs(results)
    grid = Grid(read_results(results_path))
    iou = read_iou(iou_path) if iou_path else None
    out_dir = Path(out_dir)
    written: List[Path] = []
    report = ["# Language subnetwork report", "", *_status_lines(grid, results_path), "", LEGEND, ""]
    for view in build_views(grid, iou, iou_path):
        report += [f"## {view.title}", ""]
        if view.skipped:
            report += [f"Skipped: {view.skipped}.", ""]
        for item in view.items:
            if isinstance(item, Table):
                written += _write_table(out_dir, item)
                report += [f"### {item.title}", "", item.note, "", markdown_table(item), "",
                           f"Files: [{item.name}.md]({item.name}.md), [{item.name}.csv]({item.name}.csv)", ""]
            else:
                written.append(_write_plot(out_dir, item))
                report += [f"![{item.title}]({item.name}.png)", ""]
    _write_text(out_dir / REPORT_FILE, "\n".join(report))
    written.append(out_dir / REPORT_FILE)
    return written
