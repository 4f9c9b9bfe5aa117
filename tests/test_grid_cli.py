"""Each experiment's smallest grid through the real CLI: `fairseq-subnets grid` runs its cells with
stock fairseq on the demo corpus and pretrained model, then `fairseq-subnets report` draws the
views from what it wrote (storey2025's grid, killed and resumed, is tests/test_grid_run.py).

Each grid has the fewest cells and updates its experiment allows, so that the test shows the
cells, the commands they build and the results files work together, not that anything learns."""
import csv
from pathlib import Path

import pytest

from fairseq_subnets.cli.main import main as cli

pytestmark = pytest.mark.slow

UPDATES = 4
"""The fewest updates every run of these grids starts with: the shipped tiny configs' stock
tri_stage schedule gives its decay phase int(0.3 * max_update) updates and divides by that number,
so the plugin and the grid refuse fewer than 4 (fairseq_subnets/tri_stage_phases.py). yang2023's
pruning event (interval 2) falls within it. What the tests check (cells, commands, results files, mask sparsities) does not depend
on how far a model has learned."""


@pytest.fixture(scope="module")
def demo_data(skeleton_run):
    """(corpus folder, pretrained checkpoint) of the session's demo run."""
    _, result = skeleton_run
    return Path(result.corpus_dir), Path(result.pretrained_checkpoint)


def run_grid_and_report(tmp_path, demo_data, method, *lines):
    """Writes the grid (`lines` after its common keys), runs it and its report through the CLI;
    returns (the rows of results.csv, the report folder)."""
    corpus, pretrained = demo_data
    grid = tmp_path / "grid.yaml"
    grid.write_text("\n".join([f"method: {method}", f"name: ci-{method}", f"data: {corpus}",
                               f"pretrained: {pretrained}", "seed: 1", *lines]) + "\n")
    out, report = tmp_path / "out", tmp_path / "report"
    assert cli(["grid", str(grid), "--out", str(out), "--jobs", "2", "--quiet"]) == 0
    assert cli(["report", str(out), "--out", str(report)]) == 0
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["cer"] and float(row["cer"]) >= 0 for row in rows)
    assert (report / "report.md").is_file()
    return rows, report


def test_fu2022_weight_fine_tuning_and_learned_masks(tmp_path, demo_data):
    rows, report = run_grid_and_report(
        tmp_path, demo_data, "fu2022", "languages: [ca]", f"finetune: {{updates: {UPDATES}}}",
        f"s3router: {{updates: {UPDATES}, sparsities: [0.1], sparsity: 0.1}}",
        "ablation: {languages: []}", "pruning: {languages: []}", "bundle: {languages: []}",
        "similarity: {languages: []}")
    assert [(row["cell"], row["method"]) for row in rows] == [("finetune-ca", "weights"),
                                                              ("s3router-ca-s0.1-ori-ffn", "s3router")]
    learned = rows[1]
    assert Path(learned["mask_path"]).is_file() and 0.05 < float(learned["mask_sparsity"]) < 0.15
    assert "2 of 2 cells in" in (report / "report.md").read_text()  # one sparsity: Fig. 2 is skipped


def test_liu2023_full_fine_tuning_against_a_tuner(tmp_path, demo_data):
    rows, report = run_grid_and_report(
        tmp_path, demo_data, "liu2023", "language: ca", "out_of_domain: []", f"updates: {UPDATES}",
        "tuners: {methods: [lora]}", "rank_map: {targets: ''}")
    by_method = {row["method"]: row for row in rows}
    assert sorted(by_method) == ["full", "lora"]
    assert 0 < int(by_method["lora"]["trainable_params"]) < int(by_method["full"]["trainable_params"])
    with open(tmp_path / "out" / "ranks.csv", newline="") as handle:
        assert {row["cell"] for row in csv.DictReader(handle)} == {"lora-ca"}
    assert (report / "table2.md").is_file()


def test_yang2023_pruning_and_pathways(tmp_path, demo_data):
    rows, report = run_grid_and_report(
        tmp_path, demo_data, "yang2023", "languages: [ca, ast]", "group_lasso: [0.0]",
        f"theta0: {{updates: {UPDATES}}}",
        f"pruning: {{updates: {UPDATES}, interval: 2, fraction: 0.5, target_sparsity: 0.5}}",
        f"multilingual: {{updates: {UPDATES}}}")
    models = {(row["model"], row["language"]): row for row in rows}
    assert {model for model, _ in models} == {"dense", "lap", "lsp-imp", "lsp-lth", "pathways-random",
                                              "pathways-imp", "pathways-lth"}
    assert {language for _, language in models} == {"ca", "ast"}
    assert float(models["pathways-imp", "ast"]["sparsity"]) == pytest.approx(0.5, abs=0.05)
    with open(tmp_path / "out" / "masks.csv", newline="") as handle:
        assert {row["masks"] for row in csv.DictReader(handle)} == {"imp", "lth", "random"}
    assert (report / "cer.md").is_file()
