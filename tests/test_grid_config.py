"""Grid files: what a grid expands to, and bad grid files failing before anything runs."""
from pathlib import Path

import pytest

from fairseq_subnets.cli.main import main as cli
from fairseq_subnets.methods.storey2025.spec import MANIFEST_FILES, DownstreamCell, GridError, load_grid, plan_cells


@pytest.fixture
def corpus_dir(tmp_path):
    """Manifest folders for es and ca (contents are not read before training)."""
    for language in ("es", "ca"):
        for name in MANIFEST_FILES:
            path = tmp_path / "corpus" / language / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    pretrained = tmp_path / "pretrained.pt"
    pretrained.write_bytes(b"")
    return tmp_path / "corpus"


def write_grid(tmp_path, corpus_dir, extra="", downstream="languages: [es, ca]", sparsities="[0.0, 0.5]"):
    """A grid file; `downstream` lines after the first are indented by two spaces."""
    text = "\n".join([
        "name: test", f"data: {corpus_dir}", f"pretrained: {corpus_dir.parent / 'pretrained.pt'}",
        "upstream:", "  languages: [es, ca]", "prune:", f"  sparsities: {sparsities}",
        "downstream:", f"  {downstream}", extra,
    ])
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_cells_cover_every_combination_with_one_unmasked_cell_per_pair(tmp_path, corpus_dir):
    grid = write_grid(tmp_path, corpus_dir, downstream="languages: [es, ca]\n  sources: [own, swap, union, base, random]")
    cells = plan_cells(load_grid(grid))
    unmasked = [cell for cell in cells if cell.sparsity == 0]
    assert sorted((c.upstream, c.downstream, c.source) for c in unmasked) == [
        ("ca", "ca", "own"), ("ca", "es", "own"), ("es", "ca", "own"), ("es", "es", "own")]
    masked = [cell for cell in cells if cell.sparsity == 0.5]
    assert len(masked) == 2 * 2 * 5
    assert DownstreamCell("es", "ca", 0.5, "swap", "ca", 1) in masked
    assert DownstreamCell("ca", "es", 0.5, "union", "es", 1).mask_language == "ca+es"
    assert DownstreamCell("es", "ca", 0.5, "swap", "ca", 1).mask_language == "ca"
    assert not any(cell.partner == cell.upstream for cell in cells)
    assert len({cell.name for cell in cells}) == len(cells)


def test_a_named_partner_and_source_sparsities_restrict_the_cells(tmp_path, corpus_dir):
    grid = write_grid(tmp_path, corpus_dir, sparsities="[0.0, 0.5, 0.9]",
                      downstream="languages: [es]\n  sources: [own, 'swap:es']\n  source_sparsities: [0.9]")
    swaps = [cell for cell in plan_cells(load_grid(grid)) if cell.source == "swap"]
    assert swaps == [DownstreamCell("ca", "es", 0.9, "swap", "es", 1)]


def test_dry_run_lists_cells_and_trains_nothing(tmp_path, corpus_dir, capsys):
    grid = write_grid(tmp_path, corpus_dir)
    assert cli(["grid", str(grid), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert "2 upstream models, 8 downstream cells" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


BAD_GRIDS = {
    "unknown downstream language": (dict(downstream="languages: [es, xx]"), "language 'xx': missing manifest"),
    "sparsity 1.0": (dict(sparsities="[0.0, 1.0]"), "prune.sparsities: 1.0 is outside [0, 1)"),
    "negative sparsity": (dict(sparsities="[-0.1]"), "prune.sparsities: -0.1 is outside [0, 1)"),
    "unknown key": (dict(downstream="languages: [es]\n  epoch: 3"), "unknown key downstream.epoch"),
    "unknown source": (dict(downstream="languages: [es]\n  sources: [own, swapped]"), "unknown source 'swapped'"),
    "swap partner not upstream": (dict(downstream="languages: [es]\n  sources: ['swap:pl']"), "'swap:pl'"),
    "zero epochs": (dict(downstream="languages: [es]\n  epochs: 0"), "downstream.epochs must be an integer >= 1"),
    "unknown method": (dict(extra="method: s3router"), "method: unknown method 's3router' (known: storey2025)"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_bad_grid_fails_before_any_training_naming_the_problem(tmp_path, corpus_dir, capsys, case):
    arguments, message = BAD_GRIDS[case]
    grid = write_grid(tmp_path, corpus_dir, **arguments)
    assert cli(["grid", str(grid), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert str(grid) in error and message in error
    assert not (tmp_path / "out").exists()


def test_missing_manifest_file_is_named(tmp_path, corpus_dir):
    (corpus_dir / "ca" / "test.ltr").unlink()
    with pytest.raises(GridError, match=r"language 'ca': missing manifest .*ca/test.ltr"):
        load_grid(write_grid(tmp_path, corpus_dir))


def test_language_outside_the_corpus_definition_is_named(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("corpus: demo\nupstream: {languages: [es]}\ndownstream: {languages: [es, pl]}\n")
    with pytest.raises(GridError, match=r"language 'pl' is not in corpus demo \(it has en, es, ca, ast\)"):
        load_grid(grid)


def test_yaml_syntax_error_names_the_line(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("corpus: demo\nupstream: {languages: [es]\ndownstream: x\n")
    with pytest.raises(GridError, match=rf"{grid}:\d+: not valid YAML"):
        load_grid(grid)


def test_corpus_and_data_are_exclusive(tmp_path, corpus_dir):
    grid = write_grid(tmp_path, corpus_dir, extra="corpus: demo\n")
    with pytest.raises(GridError, match="exactly one of corpus"):
        load_grid(grid)


def test_the_shipped_example_grid_is_valid():
    example = Path(__file__).resolve().parents[1] / "examples" / "storey2025" / "grid.yaml"
    spec = load_grid(example)
    cells = plan_cells(spec)
    assert {"en", "es", "pl"} <= set(spec.upstream.languages)
    assert {"ca", "ast"} <= set(spec.downstream.languages)
    assert {cell.source for cell in cells} >= {"own", "swap", "union"}
