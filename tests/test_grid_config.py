"""Grid files: what a grid expands to, and bad grid files failing before anything runs."""
import re
from pathlib import Path

import pytest

from fairseq_subnets.cli.main import main as cli
from fairseq_subnets.experiments.storey2025.spec import DownstreamCell, GridError, load_grid, plan_cells
from grid_files import write_grid, write_grid_inputs, write_pretrained


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return write_pretrained(tmp_path_factory.mktemp("pretrained") / "pretrained.pt")


@pytest.fixture
def corpus_dir(tmp_path, pretrained):
    """Manifest folders for es and ca, and the pretrained checkpoint beside them."""
    return write_grid_inputs(tmp_path, pretrained)


def test_cells_cover_every_combination_with_one_unmasked_cell_per_pair(tmp_path, corpus_dir):
    grid = write_grid(tmp_path, corpus_dir, downstream="languages: [es, ca]\nsources: [own, swap, union, base, random]")
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
    grid = write_grid(tmp_path, corpus_dir, prune="sparsities: [0.0, 0.5, 0.9]",
                      downstream="languages: [es]\nsources: [own, 'swap:es']\nsource_sparsities: [0.9]")
    swaps = [cell for cell in plan_cells(load_grid(grid)) if cell.source == "swap"]
    assert swaps == [DownstreamCell("ca", "es", 0.9, "swap", "es", 1)]


def test_dry_run_lists_cells_and_trains_nothing(tmp_path, corpus_dir, capsys):
    grid = write_grid(tmp_path, corpus_dir)
    assert cli(["grid", str(grid), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert "2 upstream models, 8 downstream cells" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_a_grid_that_pretrains_shares_its_pretraining_beside_its_output_folder_or_in_shared(tmp_path, corpus_dir,
                                                                                           capsys):
    """Without `pretrained` the grid pretrains, in the folder grids share (tests/test_shared_grid_cells.py):
    `shared` beside OUT, or --shared; the dry run names it and creates nothing."""
    (corpus_dir / "pretrain").mkdir()
    (corpus_dir / "pretrain" / "train.tsv").write_text("")
    grid = write_grid(tmp_path, corpus_dir, pretrained=None)
    assert cli(["grid", str(grid), "--dry-run", "--out", str(tmp_path / "runs" / "out")]) == 0
    shared = "(the corpus it synthesizes and the model it pretrains)"
    assert capsys.readouterr().out.splitlines()[0] == f"shared: {tmp_path / 'runs' / 'shared'} {shared}"
    assert cli(["grid", str(grid), "--dry-run", "--out", str(tmp_path / "out"), "--shared", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"shared: {tmp_path / 's'} {shared}"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "s").exists()


def test_a_grid_that_pretrains_nothing_names_no_shared_folder(tmp_path, corpus_dir, capsys):
    """Its refusal of --shared is a catalogue row (tests/test_bad_inputs_training.py)."""
    grid = write_grid(tmp_path, corpus_dir)  # its data and pretrained checkpoint given
    assert cli(["grid", str(grid), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert not capsys.readouterr().out.startswith("shared:")


BAD_GRIDS = {  # case: (write_grid arguments, what follows "GRID:LINE: "); more in test_bad_inputs_training.py
    "unknown downstream language": (dict(downstream="languages: [es, xx]"),
                                    "downstream.languages: language 'xx': missing manifest"),
    "sparsity 1.0": (dict(prune="sparsities: [0.0, 1.0]"), "prune.sparsities: 1.0 is outside [0, 1)"),
    "negative sparsity": (dict(prune="sparsities: [-0.1]"), "prune.sparsities: -0.1 is outside [0, 1)"),
    "no sparsities": (dict(prune="sparsities: []"), "prune.sparsities: must not be empty"),
    "sparsity not a number": (dict(prune="sparsities: [0.5, half]"),
                              "prune.sparsities: expected a list of numbers, got [0.5, 'half']"),
    "iou sparsity 1.5": (dict(extra="iou_sparsities: [1.5]"), "iou_sparsities: 1.5 is outside [0, 1)"),
    "source sparsity not pruned": (dict(downstream="languages: [es]\nsource_sparsities: [0.7]"),
                                   "downstream.source_sparsities: 0.7 is not one of prune.sparsities"),
    "unknown source": (dict(downstream="languages: [es]\nsources: [own, swapped]"),
                       "downstream.sources: unknown source 'swapped'"),
    "swap partner not upstream": (dict(downstream="languages: [es]\nsources: ['swap:pl']"),
                                  "downstream.sources: 'swap:pl'"),
    "zero epochs": (dict(downstream="languages: [es]\nepochs: 0"), "downstream.epochs: must be at least 1, got 0"),
    "negative frozen epochs": (dict(downstream="languages: [es]\nfreeze_epochs: -1"),
                               "downstream.freeze_epochs: must be at least 0, got -1"),
    "zero ranks": (dict(downstream="languages: [es]\nworld_size: 0"),
                   "downstream.world_size: must be at least 1, got 0"),
    "fractional updates": (dict(upstream="languages: [es]\nupdates: 2.5"),
                           "upstream.updates: expected an integer, got 2.5"),
    "zero learning rate": (dict(upstream="languages: [es]\nlr: 0"), "upstream.lr: must be above 0, got 0"),
    "boolean learning rate": (dict(downstream="languages: [es]\nlr: true"),
                              "downstream.lr: expected a number, got True"),
    "no languages": (dict(downstream="languages: []"), "downstream.languages: must not be empty"),
    "a language twice": (dict(upstream="languages: [es, ca, es]"), "upstream.languages: lists es more than once"),
    "overrides not a list": (dict(upstream="languages: [es]\noverrides: optimization.clip_norm=10"),
                             "upstream.overrides: expected a list of strings, got 'optimization.clip_norm=10'"),
    "unknown top-level key": (dict(extra="seed: [1]"), "seed: unknown key (did you mean seeds?)"),
    "unknown key, nothing close": (dict(prune="sparsities: [0.5]\nwhatever: 1"),
                                   "prune.whatever: unknown key (known: method, sparsities, targets, layers)"),
    "slurm not a mapping": (dict(extra="slurm: gpu"), "slurm must be a mapping of Slurm options"),
    "targets unreadable": (dict(prune="sparsities: [0.5]\ntargets: q,mlp"),
                           "prune.targets: unknown module kind 'mlp'"),
    "layers unreadable": (dict(prune="sparsities: [0.5]\nlayers: 3-1"), "prune.layers: range '3-1' runs backwards"),
    "layers written bare": (dict(prune="sparsities: [0.5]\nlayers: 1"),
                            "prune.layers: expected a string, got 1 (YAML reads bare words"),
}


def last_error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and "Traceback" not in "".join(lines)
    return lines[-1]


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_bad_grid_fails_before_any_training_naming_the_file_line_and_key(tmp_path, corpus_dir, capsys, case):
    arguments, message = BAD_GRIDS[case]
    grid = write_grid(tmp_path, corpus_dir, **arguments)
    assert cli(["grid", str(grid), "--out", str(tmp_path / "out")]) == 2
    line = last_error_line(capsys)
    assert re.match(rf"fairseq-subnets grid: error: {re.escape(str(grid))}:\d+: {re.escape(message)}", line), line
    assert not (tmp_path / "out").exists()


def test_a_method_the_package_lacks_is_named(tmp_path, corpus_dir, capsys):
    grid = write_grid(tmp_path, corpus_dir, method="s3router")
    assert cli(["grid", str(grid), "--dry-run"]) == 2
    line = len(grid.read_text().splitlines())
    assert last_error_line(capsys) == (f"fairseq-subnets grid: error: {grid}:{line}: method: unknown method "
                                       "'s3router' (known: storey2025, fu2022, liu2023, yang2023)")


def test_a_grid_without_a_method_is_refused_naming_the_methods(tmp_path, corpus_dir, capsys):
    """Never read as some default experiment (a fu2022 grid would fail on its first fu2022 key)."""
    grid = write_grid(tmp_path, corpus_dir, method=None)
    assert cli(["grid", str(grid), "--dry-run"]) == 2
    assert last_error_line(capsys) == (f"fairseq-subnets grid: error: {grid}: method: missing; name the experiment "
                                       "this grid is for (one of storey2025, fu2022, liu2023, yang2023)")
    with pytest.raises(GridError, match=rf"^{re.escape(str(grid))}: method: missing; .*\(method: storey2025\)$"):
        load_grid(grid)


def test_out_naming_a_file_is_refused_in_one_line(tmp_path, corpus_dir, capsys):
    grid = write_grid(tmp_path, corpus_dir)
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    for extra in ([], ["--dry-run"]):
        assert cli(["grid", str(grid), "--out", str(taken), *extra]) == 2
        assert last_error_line(capsys) == (f"fairseq-subnets grid: error: --out {taken}: is a file; name a folder "
                                           "(it is created if needed)")
    assert taken.read_text() == "not a folder"


def test_errors_give_the_line_of_the_key(tmp_path, corpus_dir, capsys):
    grid = write_grid(tmp_path, corpus_dir, downstream="languages: [es]\nepochs: 2\nmax_tokens: many")
    assert cli(["grid", str(grid), "--dry-run"]) == 2
    assert last_error_line(capsys) == (f"fairseq-subnets grid: error: {grid}:11: downstream.max_tokens: expected an "
                                       "integer, got 'many'")


def test_folder_name_must_be_a_plain_name(tmp_path, corpus_dir):
    grid = write_grid(tmp_path, corpus_dir)
    grid.write_text(grid.read_text().replace("name: test", "name: runs/test"))
    with pytest.raises(GridError, match=rf"{grid}:1: name: 'runs/test' is not a folder name"):
        load_grid(grid)


def test_upstream_checkpoints_must_be_fine_tuned(tmp_path, corpus_dir):
    pretraining = corpus_dir.parent / "pretrained.pt"
    grid = write_grid(tmp_path, corpus_dir, upstream=f"languages: [es]\ncheckpoints: {{es: {pretraining}}}")
    with pytest.raises(GridError, match=rf"{grid}:6: upstream.checkpoints.es: {pretraining} is a wav2vec2 "
                       "pretraining checkpoint, not a fine-tuned wav2vec2 CTC checkpoint; a pretraining checkpoint "
                       "goes in pretrained"):
        load_grid(grid)


def test_without_a_pretrained_checkpoint_the_pretraining_config_sets_the_depth(tmp_path, corpus_dir):
    """No `pretrained`: the grid pretrains the tiny config's 3-layer model, so a 2-layer upstream
    checkpoint and layer 3 are refused, before anything runs."""
    from factory import write_plugin_checkpoint

    (corpus_dir / "pretrain").mkdir()
    (corpus_dir / "pretrain" / "train.tsv").write_text("")
    upstream, _, _ = write_plugin_checkpoint(tmp_path)
    grid = write_grid(tmp_path, corpus_dir, pretrained=None, prune="sparsities: [0.5]\nlayers: 0-3")
    with pytest.raises(GridError, match=r"grid.yaml:7: prune.layers: layer 3 is selected but the model pretrained by "
                       r".*pretrain/tiny.yaml has 3 encoder layers \(0-2\)"):
        load_grid(grid)
    grid = write_grid(tmp_path, corpus_dir, pretrained=None,
                      upstream=f"languages: [es]\ncheckpoints: {{es: {upstream}}}")
    with pytest.raises(GridError, match=rf"upstream.checkpoints.es: {upstream} has 2 encoder layers but the model "
                       "pretrained by .*tiny.yaml has 3"):
        load_grid(grid)


def test_missing_manifest_file_is_named(tmp_path, corpus_dir):
    (corpus_dir / "ca" / "test.ltr").unlink()
    with pytest.raises(GridError, match=r"language 'ca': missing manifest .*ca/test.ltr"):
        load_grid(write_grid(tmp_path, corpus_dir))


def test_language_outside_the_corpus_definition_is_named(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("corpus: demo\nupstream: {languages: [es]}\ndownstream: {languages: [es, pl]}\n"
                    "method: storey2025\n")
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


def test_a_budget_too_short_for_the_schedule_is_refused_with_and_without_dry_run(tmp_path, corpus_dir, capsys):
    """The cells train with tiny.yaml's tri-stage schedule (phase_ratio [0.1, 0.6, 0.3]): 3 updates
    leave its decay phase none. The refusal comes before any output folder exists (also
    test_bad_inputs_training's `grid-updates-too-few-for-the-schedule`)."""
    grid = write_grid(tmp_path, corpus_dir, upstream="languages: [es, ca]\nupdates: 3")
    for options in (["--dry-run"], []):
        assert cli(["grid", str(grid), "--out", str(tmp_path / "out"), *options]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"fairseq-subnets grid: error: {grid}: cell upstream-es-seed1 trains with tiny.yaml "
                                "for the grid's 3 updates: lr_scheduler.phase_ratio=[0.1, 0.6, 0.3]"), error
        assert not (tmp_path / "out").exists()


def test_the_schedule_check_composes_each_cells_config_with_its_schedule_overrides(tmp_path, corpus_dir):
    """A cell's lr_scheduler overrides count as fairseq-hydra-train counts them: a decay share of
    0.5 gives 3 updates one decay update, so the same budget passes; 4 updates pass the shipped
    schedule; a budget the engine cannot read from the cell's work (computed while it runs) is
    left to the plugin."""
    from functools import partial

    from fairseq_subnets.engine.cells import Cell
    from fairseq_subnets.engine.grid_run import refuse_runs_too_short_for_their_schedule
    from fairseq_subnets.engine.hydra_configs import HydraConfig
    from fairseq_subnets.experiments import storey2025
    from fairseq_subnets.runner import CONFIG_DIR

    overrides = "['lr_scheduler.phase_ratio=[0.5,0.0,0.5]']"
    for upstream in (f"languages: [es, ca]\nupdates: 3\noverrides: {overrides}", "languages: [es, ca]\nupdates: 4"):
        grid = write_grid(tmp_path, corpus_dir, upstream=upstream)
        assert storey2025.GridRun(load_grid(grid), tmp_path / "out").cells
    tiny = HydraConfig("tiny", CONFIG_DIR / "finetune")
    computed_budget = Cell("downstream", tmp_path / "cell", partial(print, tiny, ["task.data=/data"]))
    refuse_runs_too_short_for_their_schedule([computed_budget], "grid.yaml")
    with pytest.raises(GridError, match=r"^grid.yaml: cell short trains with tiny.yaml for the grid's 2 updates: "):
        refuse_runs_too_short_for_their_schedule(
            [Cell("short", tmp_path / "cell", partial(print, tiny, ["optimization.max_update=2"]))], "grid.yaml")
