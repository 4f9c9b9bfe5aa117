"""The views of a Yang et al. (2023) grid: the paper's Tables 1 and 2 and Fig. 3 in miniature.

Input: the grid's `results.csv` (one row per model and language) and, when present beside it,
`masks.csv` (IOU of every pair of language masks, union ratio of each set) and
`layer_sparsity.csv`. Output: Markdown and CSV tables, PNG heatmaps and a `report.md` that shows
them in order, built from the engine's report blocks. A CER that is empty (not finished, failed) is
shown as missing, never as zero, and an average over fewer languages says so.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ...engine.report import (
    Column, Heatmap, Measure, ResultsError, Table, View, choice_field, locate_results, mean_measure, nonempty_field,
    number_field, ordered, read_rows, status_lines, write_views,
)
from .cells import LAYERS_FILE, MASKS_FILE
from .spec import MODELS, WITH_GROUP_LASSO

RESULT_COLUMNS = ("cell", "model", "group_lasso", "language", "cer", "sparsity")
MASK_COLUMNS = ("masks", "group_lasso", "a", "b", "iou", "union_ratio")
LAYER_COLUMNS = ("masks", "group_lasso", "language", "layer", "sparsity")
LEGEND = ("`–` (an empty CSV field): no result (not finished, failed, or not run), never zero; `(k/n)`: a mean "
          "over k of n languages. One seed per run.")
NOT_APPLICABLE = ""
"""The group_lasso field of the pathways on random masks, which no group lasso made."""


@dataclass(frozen=True)
class Result:
    """One row of results.csv: a model decoded on one language."""
    line: int
    cell: str
    model: str
    group_lasso: Optional[float]
    language: str
    cer: Optional[float]
    sparsity: Optional[float]


def _fraction(fields: Dict[str, str], column: str, where: str) -> Optional[float]:
    value = number_field(fields, column, where)
    if value is not None and not 0 <= value <= 1:
        raise ResultsError(f"{where}: column {column}: {value:g} is not a fraction in [0, 1]")
    return value


def read_results(path) -> List[Result]:
    """Every row of results.csv, validated; a model is decoded at most once per language."""
    path, rows, seen = Path(path), [], {}
    for line, fields in read_rows(path, RESULT_COLUMNS):
        where = f"{path}:{line}"
        model = choice_field(fields, "model", where, MODELS)
        group_lasso = number_field(fields, "group_lasso", where)
        if (group_lasso is None) == (model in WITH_GROUP_LASSO):
            raise ResultsError(f"{where}: column group_lasso: {fields['group_lasso']!r}, but {model} "
                               f"{'has' if model in WITH_GROUP_LASSO else 'has no'} a group-lasso setting")
        if group_lasso is not None and group_lasso < 0:
            raise ResultsError(f"{where}: column group_lasso: {group_lasso:g} is negative")
        cer = number_field(fields, "cer", where)
        if cer is not None and cer < 0:
            raise ResultsError(f"{where}: column cer: {cer:g} is negative")
        language = nonempty_field(fields, "language", where, "every row names the language it decoded")
        key = (model, group_lasso, language)
        if key in seen:
            raise ResultsError(f"{where}: column cell: this model and language are already on line {seen[key]}")
        seen[key] = line
        rows.append(Result(line, fields["cell"], model, group_lasso, language, cer, _fraction(fields, "sparsity", where)))
    return rows


def lasso_text(strength: Optional[float]) -> str:
    if strength is None:
        return NOT_APPLICABLE
    return "without" if strength == 0 else f"{strength:g}"


def comparison_view(results: List[Result]) -> View:
    """Tables 1 and 2: CER per language and its average for every model, with and without group lasso."""
    view = View("CER per language and on average (paper Tables 1 and 2)")
    if not results:
        view.skipped = "results.csv has no rows"
        return view
    languages = ordered(result.language for result in results)
    by_key = {(r.model, r.group_lasso, r.language): r for r in results}
    settings = ordered(f"{r.model}\t{'' if r.group_lasso is None else r.group_lasso}" for r in results)
    rows = []
    for setting in sorted(settings, key=lambda text: (MODELS.index(text.split("\t")[0]), text)):
        model, strength = setting.split("\t")
        strength = float(strength) if strength else None
        found = [by_key.get((model, strength, language)) for language in languages]
        cers = [getattr(result, "cer", None) for result in found]
        sparsities = [result.sparsity for result in found if result is not None and result.sparsity is not None]
        rows.append([model, lasso_text(strength), mean_measure(sparsities)]
                    + [Measure(cer) for cer in cers] + [mean_measure(cers)])
    view.items.append(Table(
        "cer", "CER (%) per language and averaged",
        "`group lasso`: the strength in θ0 and in the training or pruning runs that made the model or its masks "
        "(`without`: 0); empty for the random masks (trained from θ0 without). `sparsity`: of the model's masks over the prunable matrices, averaged over "
        "languages. LSP models are monolingual (each row of a language is its own model); the others are one "
        "multilingual model.",
        [Column("model"), Column("group lasso"), Column("sparsity", 3)] + [Column(language, 2) for language in languages]
        + [Column("average", 2)], rows))
    return view


def read_masks(path: Path) -> List[dict]:
    rows = []
    for line, fields in read_rows(path, MASK_COLUMNS):
        where = f"{path}:{line}"
        rows.append({"masks": nonempty_field(fields, "masks", where, "every row names its mask set"),
                     "group_lasso": number_field(fields, "group_lasso", where), "a": fields["a"], "b": fields["b"],
                     "iou": _fraction(fields, "iou", where), "union_ratio": _fraction(fields, "union_ratio", where)})
    return rows


def read_layers(path: Path) -> List[dict]:
    rows = []
    for line, fields in read_rows(path, LAYER_COLUMNS):
        where = f"{path}:{line}"
        layer = number_field(fields, "layer", where)
        if layer is None or layer < 0 or layer != int(layer):
            raise ResultsError(f"{where}: column layer: {fields['layer']!r} is not an encoder layer")
        rows.append({"masks": fields["masks"], "group_lasso": number_field(fields, "group_lasso", where),
                     "language": fields["language"], "layer": int(layer),
                     "sparsity": _fraction(fields, "sparsity", where)})
    return rows


def set_label(masks: str, strength: Optional[float]) -> str:
    return masks.upper() if strength is None else f"{masks.upper()}, group lasso {lasso_text(strength)}"


def overlap_view(masks: Optional[List[dict]], path: Optional[Path]) -> View:
    """Fig. 3: how much the language masks overlap, per mask set (IMP, LTH, random)."""
    view = View("Overlap of the language masks (paper Fig. 3)")
    if masks is None:
        view.skipped = f"no {MASKS_FILE} beside results.csv"
        return view
    if not masks:
        view.skipped = f"{path} has no rows (no finished mask analysis)"
        return view
    sets = ordered(f"{row['masks']}\t{'' if row['group_lasso'] is None else row['group_lasso']}" for row in masks)
    summary = []
    for entry in sets:
        kind, strength = entry.split("\t")
        strength = float(strength) if strength else None
        rows = [row for row in masks if row["masks"] == kind and row["group_lasso"] == strength]
        pairs = [row for row in rows if row["a"] != "all"]
        union = next((row["union_ratio"] for row in rows if row["a"] == "all"), None)
        summary.append([set_label(kind, strength), mean_measure([row["iou"] for row in pairs]), Measure(union)])
        languages = ordered([row["a"] for row in pairs] + [row["b"] for row in pairs])
        iou = {(row["a"], row["b"]): row["iou"] for row in pairs}
        matrix = [[1.0 if a == b else iou.get((a, b), iou.get((b, a))) for b in languages] for a in languages]
        name = f"iou_{kind}" + ("" if strength is None else f"_gl{strength:g}")
        view.items.append(Heatmap(name, f"IOU of the language masks, {set_label(kind, strength)}", languages, matrix,
                                  "IOU", "language", decimals=3))
    view.items[:0] = [
        Table("overlap", "Mean pairwise IOU and union ratio of the language masks",
              "IOU = |a & b| / |a | b| over the prunable weights, averaged over the pairs of languages; union ratio = "
              "|m1 | ... | mn| / weights (Yang Eq. 3). Higher IOU, lower union ratio: the languages share more "
              "weights.", [Column("masks"), Column("mean IOU", 3), Column("union ratio", 3)], summary),
        Heatmap("overlap_summary", "Overlap of the language masks",
                [row[0] for row in summary], [[row[1].value, row[2].value] for row in summary], "fraction",
                "", column_labels=["mean IOU", "union ratio"], row_axis_label="masks", decimals=3),
    ]
    return view


def layer_view(layers: Optional[List[dict]], path: Optional[Path]) -> View:
    """The sparsity of every language mask per encoder layer."""
    view = View("Sparsity per layer of the language masks")
    if not layers:
        view.skipped = f"no {LAYERS_FILE} rows beside results.csv" if layers is None else f"{path} has no rows"
        return view
    encoder_layers = sorted({row["layer"] for row in layers})
    labels = ordered(f"{row['masks']}\t{'' if row['group_lasso'] is None else row['group_lasso']}\t{row['language']}"
                     for row in layers)
    by_key = {(row["masks"], row["group_lasso"], row["language"], row["layer"]): row["sparsity"] for row in layers}
    rows = []
    for label in labels:
        kind, strength, language = label.split("\t")
        strength = float(strength) if strength else None
        rows.append([set_label(kind, strength), language]
                    + [Measure(by_key.get((kind, strength, language, layer))) for layer in encoder_layers])
    view.items.append(Table("layer_sparsity", "Sparsity per encoder layer",
                            "Uniform per-layer pruning (the paper's choice) gives every layer the target sparsity; "
                            "global pruning would not.",
                            [Column("masks"), Column("language")] + [Column(f"layer {layer}", 3)
                                                                     for layer in encoder_layers], rows))
    return view


def write_report(results, out_dir) -> List[Path]:
    """Reads RESULTS (a grid folder or its results.csv), writes every view into out_dir and report.md;
    returns the files written, report.md last."""
    results_path, masks_path, layers_path = locate_results(results, [MASKS_FILE, LAYERS_FILE])
    rows = read_results(results_path)
    masks = read_masks(masks_path) if masks_path else None
    layers = read_layers(layers_path) if layers_path else None
    preamble = [*status_lines(rows, results_path), "", LEGEND]
    return write_views(out_dir, "ASR Pathways report", preamble,
                       [comparison_view(rows), overlap_view(masks, masks_path), layer_view(layers, layers_path)],
                       LEGEND)
