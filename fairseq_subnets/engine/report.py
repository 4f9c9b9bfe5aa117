"""Method-neutral report building blocks: reading a results CSV with errors that name file, line and
column; measures that know how many of their parts are present; tables written as Markdown and CSV;
line plots, heatmaps and scatter plots as PNG; and a `report.md` that shows a method's views in order.

Missing values are shown as missing (`–` in Markdown, an empty CSV field, a gap in a line plot, a
grey "n/a" heatmap cell, a scatter point left out and counted), never as zero, and a mean over
fewer parts than expected says so.

Pure Python and matplotlib (its object API, which draws headless without pyplot's global state);
no torch or fairseq, so reporting works anywhere the results files are.
"""
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import matplotlib
import numpy
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..atomic import atomic_path, write_atomically
from .results import RESULTS_CSV

MISSING_MARK = "–"
REPORT_FILE = "report.md"


class ResultsError(ValueError):
    """A problem in the results files the user can fix; the message names file, line and column."""


# ------------------------------------------------------------------------------------------ input


def locate_results(results, beside: Sequence[str]) -> Tuple[Optional[Path], ...]:
    """RESULTS (a grid folder or its results.csv) -> (results.csv, then each file named in `beside`
    next to it, or None where it is missing): how every experiment's report finds its inputs."""
    path = Path(results)
    if path.is_dir():
        results_path = path / RESULTS_CSV
        if not results_path.is_file():
            raise ResultsError(f"{path}: no {RESULTS_CSV} in this folder")
    elif path.is_file():
        results_path = path
    else:
        raise ResultsError(f"{path}: no such file or folder")
    found = [results_path.with_name(name) for name in beside]
    return (results_path, *(candidate if candidate.is_file() else None for candidate in found))


def read_rows(path: Path, required: Sequence[str]) -> List[Tuple[int, Dict[str, str]]]:
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


def number_field(fields: Dict[str, str], column: str, where: str) -> Optional[float]:
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


def bounded_field(fields: Dict[str, str], column: str, where: str, low: float, high: float,
                  high_included: bool) -> float:
    """A number that must be present and within [low, high] (or [low, high))."""
    value = number_field(fields, column, where)
    if value is None:
        raise ResultsError(f"{where}: column {column}: empty")
    if not (low <= value <= high if high_included else low <= value < high):
        interval = f"[{low:g}, {high:g}{']' if high_included else ')'}"
        raise ResultsError(f"{where}: column {column}: {value:g} is outside {interval}")
    return value


def choice_field(fields: Dict[str, str], column: str, where: str, choices: Sequence[str]) -> str:
    if fields[column] not in choices:
        raise ResultsError(f"{where}: column {column}: unknown value {fields[column]!r} "
                           f"(expected one of {', '.join(choices)})")
    return fields[column]


def nonempty_field(fields: Dict[str, str], column: str, where: str, why: str) -> str:
    if not fields[column]:
        raise ResultsError(f"{where}: column {column}: empty ({why})")
    return fields[column]


# ----------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Measure:
    """A number that is a mean over `count` of the `expected` parts (seeds, languages, ...); None
    when no part is present."""
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


def sparsity_text(sparsity: float) -> str:
    """A sparsity as tables and file names show it: 0.5, not 0.50."""
    return f"{sparsity:g}"


def ordered(items: Iterable[str]) -> List[str]:
    """Distinct items in order of first appearance."""
    return list(dict.fromkeys(items))


def status_lines(runs: Sequence, results_path: Path) -> List[str]:
    """report.md's first lines: how many of the rows of results.csv (each with `cer`, `cell` and
    `line`) have a CER, and which have none."""
    unfinished = [run for run in runs if run.cer is None]
    lines = [f"{len(runs) - len(unfinished)} of {len(runs)} cells in `{results_path}` have a CER; "
             f"{len(unfinished)} not finished (empty CER). Cells absent from the file cannot be counted here."]
    if unfinished:
        lines.append("Not finished: " + ", ".join(run.cell or f"line {run.line}" for run in unfinished) + ".")
    return lines


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


# ------------------------------------------------------------------------------------------ plots


@dataclass
class LinePlot:
    """One line per label over x; a missing point is a gap, an incomplete one is hollow. A label
    keeps the colour `colours` gives it in every plot."""
    name: str
    title: str
    legend_title: str
    series: Dict[str, List[Tuple[float, Measure]]]
    colours: Dict[str, str]
    x_label: str
    y_label: str

    def draw(self, figure: Figure) -> None:
        axes = figure.subplots()
        any_incomplete = False
        for label, points in self.series.items():
            xs = [x for x, _ in points]
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
        axes.set_xticks(sorted({x for points in self.series.values() for x, _ in points}))
        axes.set_xlabel(self.x_label)
        axes.set_ylabel(self.y_label)
        axes.grid(True, alpha=0.3)


@dataclass
class Heatmap:
    """A matrix with the value written in each cell; a missing value is a grey n/a. Square (one set
    of `labels` on both axes) unless `column_labels` are given: then `labels` name the rows and
    `row_axis_label` the row axis."""
    name: str
    title: str
    labels: List[str]
    matrix: List[List[Optional[float]]]
    value_label: str
    axis_label: str
    column_labels: Optional[List[str]] = None
    row_axis_label: Optional[str] = None
    decimals: int = 2

    @property
    def columns(self) -> List[str]:
        return self.column_labels if self.column_labels is not None else self.labels

    def draw(self, figure: Figure) -> None:
        values = numpy.array([[math.nan if value is None else value for value in row] for row in self.matrix])
        colormap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
        axes = figure.subplots()
        image = axes.imshow(numpy.ma.masked_invalid(values), cmap=colormap)
        axes.set_xticks(range(len(self.columns)), self.columns)
        axes.set_yticks(range(len(self.labels)), self.labels)
        for i in range(len(self.labels)):
            for j in range(len(self.columns)):
                value = values[i, j]
                missing = math.isnan(value)
                colour = "black" if missing or image.norm(value) > 0.5 else "white"
                axes.text(j, i, "n/a" if missing else f"{value:.{self.decimals}f}", ha="center", va="center",
                          color=colour)
        figure.colorbar(image, ax=axes, label=self.value_label)
        axes.set_title(self.title)
        axes.set_xlabel(self.axis_label)
        axes.set_ylabel(self.row_axis_label or self.axis_label)


@dataclass
class ScatterPlot:
    """Points per label, one colour per label, each point annotated with its text (e.g. the pair it
    stands for); a point missing a coordinate is left out, and the title says how many were."""
    name: str
    title: str
    legend_title: str
    series: Dict[str, List[Tuple[Optional[float], Optional[float], str]]]
    colours: Dict[str, str]
    x_label: str
    y_label: str

    def draw(self, figure: Figure) -> None:
        axes = figure.subplots()
        left_out = 0
        for label, points in self.series.items():
            present = [(x, y, text) for x, y, text in points if x is not None and y is not None]
            left_out += len(points) - len(present)
            if not present:
                continue
            axes.scatter([x for x, _, _ in present], [y for _, y, _ in present], color=self.colours[label],
                         label=label)
            for x, y, text in present:
                axes.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        title = f"{self.title}\n({left_out} points without a value left out)" if left_out else self.title
        if any(x is not None and y is not None for points in self.series.values() for x, y, _ in points):
            axes.legend(title=self.legend_title)
        axes.set_title(title)
        axes.set_xlabel(self.x_label)
        axes.set_ylabel(self.y_label)
        axes.grid(True, alpha=0.3)


# ----------------------------------------------------------------------------------------- output


@dataclass
class View:
    """One part of a report: tables and plots in display order, or why it was skipped."""
    title: str
    items: List[Union[Table, LinePlot, Heatmap, ScatterPlot]] = field(default_factory=list)
    skipped: str = ""


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, text.encode("utf-8"))


def write_table(out_dir: Path, table: Table, legend: str) -> List[Path]:
    """NAME.md (title, note, `legend` where values carry counts, the table) and NAME.csv."""
    legend = f" {legend}" if any(column.count_headers for column in table.columns) else ""
    markdown, comma_separated = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
    _write_text(markdown, f"# {table.title}\n\n{table.note}{legend}\n\n{markdown_table(table)}\n")
    _write_text(comma_separated, csv_text(table))
    return [markdown, comma_separated]


def write_plot(out_dir: Path, plot: Union[LinePlot, Heatmap, ScatterPlot]) -> Path:
    if isinstance(plot, Heatmap):  # room for every cell and for the longest row label
        label_width = 0.08 * max(map(len, plot.labels), default=0)
        size = (1.3 * len(plot.columns) + 2.2 + label_width, 1.1 * len(plot.labels) + 1.5)
    else:
        size = (7, 4.5)
    figure = Figure(figsize=size, layout="constrained")
    plot.draw(figure)
    path = out_dir / f"{plot.name}.png"
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return path


def write_views(out_dir, title: str, preamble: Sequence[str], views: Sequence[View], legend: str) -> List[Path]:
    """Every view's tables and plots into out_dir, and report.md (the title, the preamble lines,
    then each view in order, a skipped one with its reason); returns the files, report.md last."""
    out_dir = Path(out_dir)
    written: List[Path] = []
    report = [f"# {title}", "", *preamble, ""]
    for view in views:
        report += [f"## {view.title}", ""]
        if view.skipped:
            report += [f"Skipped: {view.skipped}.", ""]
        for item in view.items:
            if isinstance(item, Table):
                written += write_table(out_dir, item, legend)
                report += [f"### {item.title}", "", item.note, "", markdown_table(item), "",
                           f"Files: [{item.name}.md]({item.name}.md), [{item.name}.csv]({item.name}.csv)", ""]
            else:
                written.append(write_plot(out_dir, item))
                report += [f"![{item.title}]({item.name}.png)", ""]
    _write_text(out_dir / REPORT_FILE, "\n".join(report))
    written.append(out_dir / REPORT_FILE)
    return written
