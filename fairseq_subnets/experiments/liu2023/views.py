"""The views of a Liu et al. (2023) grid: the paper's Table 2 and Fig. 3 in miniature.

Input: the grid's `results.csv` (one row per run and evaluation set) and, when present beside it,
`ranks.csv` (the rank in use of every adapted matrix of the runs with ranks). Output: Markdown and
CSV tables, PNG heatmaps and a `report.md` that shows them in order, built from the engine's report
blocks. A run whose CER is empty (not finished, failed) is shown as missing, never as zero.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ...core.targets import KINDS
from ...engine.report import (
    Column, Heatmap, Measure, ResultsError, Table, View, choice_field, locate_results, mean_measure, nonempty_field,
    number_field, ordered, read_rows, status_lines, write_views,
)
from .cells import IN_DOMAIN, OUT_OF_DOMAIN, RANK_COLUMNS, RANKS_FILE

RESULT_COLUMNS = ("cell", "method", "setting", "language", "eval_language", "domain", "cer", "wer",
                  "unknown_characters", "trainable_params", "trainable_percent", "head_params")
LEGEND = "`–` (an empty CSV field): no result (not finished, failed, or not run), never zero. One seed per run."


@dataclass(frozen=True)
class Run:
    """One row of results.csv: a run decoded on one evaluation set."""
    line: int
    cell: str
    method: str
    setting: str
    language: str
    eval_language: str
    domain: str
    cer: Optional[float]
    unknown_characters: Optional[float]
    trainable_params: Optional[float]
    trainable_percent: Optional[float]

    @property
    def label(self) -> Tuple[str, str]:
        return self.method, self.setting


def _run_from_fields(fields: Dict[str, str], path: Path, line: int) -> Run:
    where = f"{path}:{line}"
    domain = choice_field(fields, "domain", where, (IN_DOMAIN, OUT_OF_DOMAIN))
    language = nonempty_field(fields, "language", where, "every run names its training language")
    eval_language = nonempty_field(fields, "eval_language", where, "every row names the test set it decoded")
    if (domain == IN_DOMAIN) != (eval_language == language):
        raise ResultsError(f"{where}: column domain: {domain!r}, but the row trains on {language!r} and decodes "
                           f"{eval_language!r}")
    numbers = {}
    for column in ("cer", "unknown_characters", "trainable_params", "trainable_percent"):
        value = number_field(fields, column, where)
        if value is not None and value < 0:
            raise ResultsError(f"{where}: column {column}: {value:g} is negative")
        numbers[column] = value
    return Run(line, fields["cell"], nonempty_field(fields, "method", where, "every row names its method"),
               fields["setting"], language, eval_language, domain, **numbers)


def read_results(path) -> List[Run]:
    """Every row of results.csv, validated; a run is decoded at most once per evaluation set."""
    path, runs, seen = Path(path), [], {}
    for line, fields in read_rows(path, RESULT_COLUMNS):
        run = _run_from_fields(fields, path, line)
        key = (run.label, run.language, run.eval_language)
        if key in seen:
            raise ResultsError(f"{path}:{line}: column cell: this run and test set are already on line {seen[key]}")
        seen[key] = line
        runs.append(run)
    return runs


@dataclass(frozen=True)
class RankRow:
    line: int
    cell: str
    method: str
    setting: str
    layer: int
    ranks: Tuple[Optional[float], ...]


def read_ranks(path: Path) -> List[RankRow]:
    rows = []
    for line, fields in read_rows(path, RANK_COLUMNS):
        where = f"{path}:{line}"
        layer = number_field(fields, "layer", where)
        if layer is None or layer < 0 or layer != int(layer):
            raise ResultsError(f"{where}: column layer: {fields['layer']!r} is not an encoder layer")
        ranks = tuple(number_field(fields, kind, where) for kind in KINDS)
        bad = next((kind for kind, rank in zip(KINDS, ranks) if rank is not None and (rank < 0 or rank != int(rank))),
                   None)
        if bad:
            raise ResultsError(f"{where}: column {bad}: {fields[bad]!r} is not a rank")
        rows.append(RankRow(line, nonempty_field(fields, "cell", where, "every row names its run"),
                            fields["method"], fields["setting"], int(layer), ranks))
    return rows


# ------------------------------------------------------------------------------------------ views


def run_text(method: str, setting: str) -> str:
    return method if setting in ("", "paper", "every weight") else f"{method} ({setting})"


def comparison_view(runs: List[Run]) -> View:
    """Table 2: what each method trains and its CER in domain and on every out-of-domain test set."""
    view = View("Trainable parameters and CER per test set (paper Table 2)")
    if not runs:
        view.skipped = "results.csv has no rows"
        return view
    labels = ordered(run.label for run in runs)
    in_domain = ordered(run.eval_language for run in runs if run.domain == IN_DOMAIN)
    out_of_domain = ordered(run.eval_language for run in runs if run.domain == OUT_OF_DOMAIN)
    by_key = {(run.label, run.eval_language): run for run in runs}
    rows = []
    for label in labels:
        found = [run for run in runs if run.label == label]
        first = found[0]
        rows.append([run_text(*label), mean_measure([first.trainable_params]), mean_measure([first.trainable_percent])]
                    + [mean_measure([getattr(by_key.get((label, language)), "cer", None)])
                       for language in in_domain + out_of_domain])
    unknown = {language: next((run.unknown_characters for run in runs if run.eval_language == language
                               and run.unknown_characters is not None), None) for language in out_of_domain}
    unknown_text = "; ".join(f"{language}: {100 * share:.2f}% of its reference characters are outside the training "
                             "dictionary" for language, share in unknown.items() if share)
    view.items.append(Table(
        "table2", "Trainable parameters and CER (%) per test set",
        "`trainable`: the parameters the method trains (a tensor shared by several matrices counted once; full "
        "fine-tuning: every pretrained weight), without the CTC output layer every run trains; `%`: of the "
        "pretrained model's parameters. `in:` the training language's test set, `out:` another language's, "
        "decoded with the training dictionary." + (f" {unknown_text}." if unknown_text else ""),
        [Column("method"), Column("trainable", 0), Column("trainable_%", 4)]
        + [Column(f"in:{language}", 2) for language in in_domain]
        + [Column(f"out:{language}", 2) for language in out_of_domain], rows))
    return view


def rank_view(ranks: Optional[List[RankRow]], ranks_path: Optional[Path]) -> View:
    """Fig. 3: the rank each adapted matrix uses, per run with ranks, as a table and a heatmap."""
    view = View("Learned rank distribution (paper Fig. 3)")
    if ranks is None:
        view.skipped = f"no {RANKS_FILE} beside results.csv"
        return view
    if not ranks:
        view.skipped = f"{ranks_path} has no rows (no finished run with ranks)"
        return view
    for cell in ordered(row.cell for row in ranks):
        rows = [row for row in ranks if row.cell == cell]
        title = f"Ranks in use, {run_text(rows[0].method, rows[0].setting)}"
        matrix = [list(row.ranks) for row in rows]
        total = sum(rank for row in matrix for rank in row if rank is not None)
        view.items.append(Table(
            f"ranks_{cell}", title,
            f"Rows: encoder layers; columns: the matrices; `–`: not adapted. {total:.0f} ranks in use in all "
            "(AdaLoRA: triplets kept by the allocator; S2-LoRA: coefficients with |s| >= 1e-4).",
            [Column("layer")] + [Column(kind, 0) for kind in KINDS],
            [[str(row.layer)] + [Measure(rank) for rank in row.ranks] for row in rows]))
        view.items.append(Heatmap(f"ranks_{cell}", title, [str(row.layer) for row in rows], matrix, "rank in use",
                                  "matrix", column_labels=list(KINDS), row_axis_label="encoder layer", decimals=0))
    return view


def write_report(results, out_dir) -> List[Path]:
    """Reads RESULTS (a grid folder or its results.csv), writes every view into out_dir and report.md;
    returns the files written, report.md last."""
    results_path, ranks_path = locate_results(results, [RANKS_FILE])
    runs = read_results(results_path)
    ranks = read_ranks(ranks_path) if ranks_path else None
    preamble = [*status_lines(runs, results_path), "", LEGEND]
    return write_views(out_dir, "Parameter-efficient fine-tuning report", preamble,
                       [comparison_view(runs), rank_view(ranks, ranks_path)], LEGEND)
