"""`fairseq-subnets report` on a small hand-made grid: every view is written, values and means are
right, missing cells stay missing (never 0), IOU matrices are symmetric, bad input is a user error."""
import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from fairseq_subnets.cli.main import main

UPSTREAMS = ("en", "es", "pl")
DOWNSTREAMS = ("en", "es", "pl", "ast")
SPARSITIES = (0.7, 0.8, 0.9)
HEADER = ("cell,stage,upstream,downstream,sparsity,source,mask_language,seed,cer,wer,test_utterances,"
          "mask_sparsity,updates,checkpoint,mask_path,train_seconds,decode_seconds,comment").split(",")
UNFINISHED = ("es", "pl", 0.8)      # in results.csv with an empty CER
ABSENT = ("pl", "en", 0.9)          # not in results.csv at all
TWO_SEEDS = ("en", "es", 0.7)       # seeds 0 and 1: CER 20 and 22, mean 21
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def own_cer(upstream, downstream, sparsity):
    """A CER that encodes its coordinates: en/es/pl upstream 10/20/30, + downstream position, + 10 * sparsity."""
    return 10 * (UPSTREAMS.index(upstream) + 1) + DOWNSTREAMS.index(downstream) + round(10 * sparsity)


def row(cell, stage, upstream, downstream, sparsity, source, mask, cer, seed=0, mask_sparsity=""):
    return {"cell": cell, "stage": stage, "upstream": upstream, "downstream": downstream, "sparsity": sparsity,
            "source": source, "mask_language": mask, "seed": seed, "cer": cer, "wer": "" if cer == "" else 2 * cer,
            "mask_sparsity": mask_sparsity, "test_utterances": 100, "comment": "ignored extra column"}


def grid_rows():
    rows = [row(f"up_{u}", "upstream", u, u, 0.0, "none", "", 5.0 + UPSTREAMS.index(u)) for u in UPSTREAMS]
    rows += [row(f"en_{d}_0", "downstream", "en", d, 0.0, "none", "", own_cer("en", d, 0.0)) for d in DOWNSTREAMS]
    for u in UPSTREAMS:
        for d in DOWNSTREAMS:
            for s in SPARSITIES:
                if (u, d, s) == ABSENT:
                    continue
                cer = "" if (u, d, s) == UNFINISHED else own_cer(u, d, s)
                if (u, d, s) == TWO_SEEDS:
                    cer = 20.0
                rows.append(row(f"{u}_{d}_{s}", "downstream", u, d, s, "own", u, cer, mask_sparsity=s))
    rows.append(row("en_es_0.7_seed1", "downstream", "en", "es", 0.7, "own", "en", 22.0, seed=1, mask_sparsity=0.7))
    for model, mask in (("en", "es"), ("es", "en")):
        for d, cer in (("en", 44.0 if model == "en" else 42.5), ("es", 28.86 if model == "en" else 26.52)):
            rows.append(row(f"swap_{model}_{mask}_{d}", "downstream", model, d, 0.9, "swap", mask, cer))
    rows += [row("union_en_en", "downstream", "en", "en", 0.9, "union", "en+es", 34.88, mask_sparsity=0.85),
             row("union_en_es", "downstream", "en", "es", 0.9, "union", "en+es", "", mask_sparsity=0.85)]
    return rows


def write_results(directory, rows, header=HEADER):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "results.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (directory / "results.json").write_text(json.dumps({"method": "storey2025"}))
    return directory / "results.csv"


def write_iou(directory):
    (directory / "iou.csv").write_text(
        "sparsity,a,b,iou\n0.9,en,es,0.8067\n0.9,pl,en,0.8211\n0.9,base,en,0.9012\n0.9,base,es,0.85\n"
        "0.9,base,pl,0.86\n0.8,en,es,0.9\n")


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def markdown_rows(path):
    """Markdown table rows as lists of cells, header and separator left out."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def find(rows, **wanted):
    (match,) = [r for r in rows if all(r[key] == value for key, value in wanted.items())]
    return match


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One full report through the CLI, from the grid folder: (exit code, output folder)."""
    grid = tmp_path_factory.mktemp("grid")
    write_results(grid, grid_rows())
    write_iou(grid)
    out = tmp_path_factory.mktemp("report") / "out"
    code = main(["report", str(grid), "--out", str(out)])
    return code, out


EXPECTED_FILES = {
    *(f"{name}.{suffix}" for name in ("cer_by_sparsity", "mean_cer_by_subnet", "mean_cer_by_downstream",
                                      "swap_table", "union_table", "upstream", "iou_0.8", "iou_0.9")
      for suffix in ("md", "csv")),
    "cer_vs_sparsity_en.png", "cer_vs_sparsity_es.png", "cer_vs_sparsity_pl.png", "mean_cer_by_subnet.png",
    "mean_cer_by_downstream.png", "iou_0.8.png", "iou_0.9.png", "report.md",
}


def test_every_view_is_written_and_pngs_are_real_images(report):
    code, out = report
    assert code == 0
    assert {path.name for path in out.iterdir()} == EXPECTED_FILES
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_report_md_embeds_every_file_in_order_and_names_skipped_views(report):
    _, out = report
    text = (out / "report.md").read_text()
    assert "47 of 49 cells" in text and "2 not finished" in text and "es_pl_0.8, union_en_es." in text
    for name in EXPECTED_FILES - {"report.md"}:
        assert f"({name})" in text
    assert text.index("cer_by_sparsity.md") < text.index("mean_cer_by_subnet.png") < text.index("swap_table.csv") \
        < text.index("union_table.csv") < text.index("upstream.csv") < text.index("iou_0.9.png")
    assert "Skipped: no base or random mask cells." in text
    assert not (out / "control_table.md").exists()


def test_main_table_values_seed_means_and_missing_cells(report):
    _, out = report
    rows = read_csv(out / "cer_by_sparsity.csv")
    assert [(r["upstream"], r["sparsity"]) for r in rows] == [
        ("en", "0"), ("en", "0.7"), ("en", "0.8"), ("en", "0.9"), ("es", "0.7"), ("es", "0.8"), ("es", "0.9"),
        ("pl", "0.7"), ("pl", "0.8"), ("pl", "0.9")]
    assert find(rows, upstream="en", sparsity="0.9")["ast"] == "22.00"
    assert find(rows, upstream="en", sparsity="0")["pl"] == "12.00"
    two_seeds = find(rows, upstream="en", sparsity="0.7")
    assert (two_seeds["es"], two_seeds["es_seeds"]) == ("21.00", "2")
    unfinished = find(rows, upstream="es", sparsity="0.8")
    absent = find(rows, upstream="pl", sparsity="0.9")
    assert (unfinished["pl"], unfinished["pl_seeds"]) == ("", "0")
    assert (absent["en"], absent["en_seeds"]) == ("", "0")
    markdown = markdown_rows(out / "cer_by_sparsity.md")
    assert markdown[8] == ["pl", "0.8", "38.00", "39.00", "40.00", "41.00"]
    assert markdown[5][4] == "–" and markdown[9][2] == "–"   # es->pl at 0.8 unfinished, pl->en at 0.9 absent
    assert not any(cell in ("0", "0.00") for line in markdown for cell in line[2:])


def test_means_skip_the_matching_language_and_mark_incomplete_means(report):
    _, out = report
    by_subnet = read_csv(out / "mean_cer_by_subnet.csv")
    # en at 0.7 averages es (seed mean 21), pl (19) and ast (20): not en itself (17)
    assert find(by_subnet, subnet="en", sparsity="0.7") == {
        "subnet": "en", "sparsity": "0.7", "mean_cer": "20.00", "n": "3", "expected": "3"}
    assert find(by_subnet, subnet="pl", sparsity="0.9") == {   # pl->en is absent: mean of es 40, ast 42
        "subnet": "pl", "sparsity": "0.9", "mean_cer": "41.00", "n": "2", "expected": "3"}
    by_downstream = read_csv(out / "mean_cer_by_downstream.csv")
    assert find(by_downstream, downstream="ast", sparsity="0.7")["mean_cer"] == "30.00"   # no ast upstream
    assert find(by_downstream, downstream="en", sparsity="0.9") == {
        "downstream": "en", "sparsity": "0.9", "mean_cer": "29.00", "n": "1", "expected": "2"}
    # en at sparsity 0 exists only for the en upstream, which is excluded: nothing to average
    assert find(by_downstream, downstream="en", sparsity="0") == {
        "downstream": "en", "sparsity": "0", "mean_cer": "", "n": "0", "expected": "2"}
    markdown = markdown_rows(out / "mean_cer_by_downstream.md")
    assert ["en", "0.9", "29.00 (1/2)"] in markdown and ["en", "0", "–"] in markdown
    assert ["es", "0.8", "29.50 (2/3)"] in markdown_rows(out / "mean_cer_by_subnet.md")


def test_swap_and_union_tables_sit_beside_the_own_subnetwork(report):
    _, out = report
    swap = read_csv(out / "swap_table.csv")
    assert [r["model/subnet"] for r in swap] == ["en / en", "en / es", "es / es", "es / en"]
    assert list(swap[0])[:7] == ["sparsity", "model/subnet", "mask_sparsity", "en", "en_seeds", "es", "es_seeds"]
    assert find(swap, **{"model/subnet": "en / es"})["en"] == "44.00"
    assert find(swap, **{"model/subnet": "es / es"})["en"] == f"{own_cer('es', 'en', 0.9):.2f}"
    assert find(swap, **{"model/subnet": "es / en"})["mean_cer"] == f"{(42.5 + 26.52) / 2:.2f}"
    union = markdown_rows(out / "union_table.md")
    assert union == [["0.9", "en: en", "0.9000", "19.00", "20.00", "19.50"],
                     ["0.9", "en: en+es", "0.8500", "34.88", "–", "34.88 (1/2)"]]
    upstream = read_csv(out / "upstream.csv")
    assert [(r["upstream"], r["cer"], r["wer"]) for r in upstream] == [
        ("en", "5.00", "10.00"), ("es", "6.00", "12.00"), ("pl", "7.00", "14.00")]


def test_iou_matrix_is_symmetric_with_unit_diagonal_and_missing_pairs_empty(report):
    _, out = report
    rows = read_csv(out / "iou_0.9.csv")
    labels = [r["subnet"] for r in rows]
    assert labels == ["en", "es", "pl", "base"]
    matrix = {(r["subnet"], b): r[b] for r in rows for b in labels}
    assert all(matrix[a, a] == "100.00" for a in labels)
    assert all(matrix[a, b] == matrix[b, a] for a in labels for b in labels)
    assert matrix["en", "es"] == "80.67" and matrix["en", "pl"] == "82.11" and matrix["en", "base"] == "90.12"
    assert matrix["es", "pl"] == ""
    assert markdown_rows(out / "iou_0.9.md")[1] == ["es", "80.67", "100.00", "–", "85.00"]
    assert [r["subnet"] for r in read_csv(out / "iou_0.8.csv")] == ["en", "es"]


def test_results_file_path_without_iou_skips_iou_views(tmp_path, capsys):
    results = write_results(tmp_path / "grid", grid_rows())
    code, stdout, _ = run_cli(capsys, "report", results, "--out", tmp_path / "out")
    assert code == 0
    printed = [Path(line) for line in stdout.splitlines()]
    assert printed[-1] == tmp_path / "out" / "report.md" and all(path.is_file() for path in printed)
    assert not list((tmp_path / "out").glob("iou_*"))
    assert "Skipped: no iou.csv beside results.csv." in (tmp_path / "out" / "report.md").read_text()


def change(rows, cell, **fields):
    return [{**r, **fields} if r["cell"] == cell else r for r in rows]


def line_of(rows, cell):
    """Data row k is on line k + 2 of results.csv (line 1 is the header)."""
    return 2 + [r["cell"] for r in rows].index(cell)


@pytest.mark.parametrize("cell, fields, message", [
    ("en_es_0.8", {"cer": "12,5"}, "column cer: '12,5' is not a number"),
    ("up_es", {"sparsity": 1.0}, "column sparsity: 1 is outside [0, 1)"),
    ("en_pl_0", {"stage": "finetune"}, "column stage: unknown value 'finetune'"),
    ("en_pl_0.9", {"source": "pruned"}, "column source: unknown value 'pruned'"),
], ids=["non-numeric cer", "sparsity 1", "unknown stage", "unknown source"])
def test_bad_results_are_user_errors_naming_file_line_and_column(cell, fields, message, tmp_path, capsys):
    rows = grid_rows()
    results = write_results(tmp_path, change(rows, cell, **fields))
    code, _, stderr = run_cli(capsys, "report", tmp_path, "--out", tmp_path / "out")
    assert code == 2
    assert stderr.startswith("fairseq-subnets report: error: ")
    assert f"{results}:{line_of(rows, cell)}: {message}" in stderr
    assert not (tmp_path / "out").exists()


def test_a_seed_given_twice_is_a_user_error(tmp_path, capsys):
    rows = grid_rows()
    write_results(tmp_path, rows + [rows[line_of(rows, "es_ast_0.7") - 2]])
    code, _, stderr = run_cli(capsys, "report", tmp_path, "--out", tmp_path / "out")
    assert code == 2
    assert (f"results.csv:{len(rows) + 2}: column seed: seed 0 of this configuration is already on line "
            f"{line_of(rows, 'es_ast_0.7')}") in stderr


def test_missing_column_missing_path_and_contradicting_iou_are_user_errors(tmp_path, capsys):
    write_results(tmp_path / "no_cer", grid_rows(), header=[name for name in HEADER if name != "cer"])
    code, _, stderr = run_cli(capsys, "report", tmp_path / "no_cer", "--out", tmp_path / "out")
    assert code == 2 and "results.csv:1: missing column cer" in stderr

    code, _, stderr = run_cli(capsys, "report", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert code == 2 and "nowhere: no such file or folder" in stderr

    write_results(tmp_path / "iou", grid_rows())
    (tmp_path / "iou" / "iou.csv").write_text("sparsity,a,b,iou\n0.9,en,es,0.8\n0.9,es,en,0.7\n")
    code, _, stderr = run_cli(capsys, "report", tmp_path / "iou", "--out", tmp_path / "out")
    assert code == 2 and "iou.csv:3: column iou: 0.7 contradicts 0.8 for the same pair on line 2" in stderr


def test_views_without_data_are_skipped_and_named(tmp_path, capsys):
    rows = [r for r in grid_rows() if r["stage"] == "upstream"]
    write_results(tmp_path / "grid", rows)
    (tmp_path / "grid" / "iou.csv").write_text("sparsity,a,b,iou\n")
    code, _, _ = run_cli(capsys, "report", tmp_path / "grid", "--out", tmp_path / "out")
    assert code == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["report.md", "upstream.csv", "upstream.md"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert text.count("Skipped: ") == 7 and "iou.csv has no IOU values" in text
    assert "3 of 3 cells" in text


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("example", sorted(path.name for path in EXAMPLES.iterdir() if path.is_dir()))
def test_every_shipped_example_re_reports_as_it_is(example, tmp_path, capsys):
    """From the folder and from its results.csv: the grid.yaml beside the table names the method."""
    for source in (EXAMPLES / example, EXAMPLES / example / "results.csv"):
        out = tmp_path / source.name
        code, stdout, stderr = run_cli(capsys, "report", source, "--out", out)
        assert code == 0, stderr
        assert Path(stdout.splitlines()[-1]) == out / "report.md" and (out / "report.md").is_file()


def test_results_that_name_no_method_ask_for_it_and_are_never_guessed(tmp_path, capsys):
    seed2 = EXAMPLES / "yang2023" / "seed2"
    code, _, stderr = run_cli(capsys, "report", seed2, "--out", tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()
    assert stderr.strip().splitlines()[-1] == (
        f"fairseq-subnets report: error: {seed2}: nothing names the method that wrote these results (no results.json "
        "or grid.yaml with method: beside them); name it with --method (one of storey2025, fu2022, liu2023, yang2023)")
    code, _, stderr = run_cli(capsys, "report", seed2, "--out", tmp_path / "out", "--method", "yang2023")
    assert code == 0, stderr
    code, _, stderr = run_cli(capsys, "report", EXAMPLES / "fu2022", "--out", tmp_path / "fu", "--method", "storey2025")
    assert code == 2 and not (tmp_path / "fu").exists()
    assert stderr.strip().splitlines()[-1].startswith(
        f"fairseq-subnets report: error: --method storey2025: {EXAMPLES / 'fu2022' / 'grid.yaml'}:5 says the results "
        "are fu2022's")
