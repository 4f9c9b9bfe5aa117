"""The S2-LoRA comparison (Liu et al. 2023) grid: bad grid files refused before anything runs,
naming the file, line and key; the whole grid through the real engine and cells with a stand-in
for fairseq as the grid's runner (training saves a real tiny CTC model carrying the run's tuner, decoding returns fixed
rates), so the parameter counts, ranks and out-of-domain folders are the real code's; and the
report drawn from hand-made results."""
import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fairseq_subnets
from fairseq_subnets.cli.main import main as cli
from fairseq_subnets.core.targets import KINDS
from fairseq_subnets.techniques.tuners import inject_tuner, tuner_config
from fairseq_subnets.data.check import check_manifest_dir
from fairseq_subnets.engine.grid_file import MANIFEST_FILES
from fairseq_subnets.engine.report import ResultsError
from fairseq_subnets.engine.scheduler import CellFailed
from fairseq_subnets.experiments import liu2023
from fairseq_subnets.experiments.liu2023.spec import load_grid
from fairseq_subnets.plugin.components.models import W2V_PREFIX
from grid_files import assert_refused_with_line_replaced, copy_shipped_configs, example_grid_on, run_method_grid
from factory import TINY, ctc_model, encoder_shapes

DICTIONARIES = {"es": "| a b c d e ñ", "ast": "| a b c d e ḷ"}
AST_TEST = "a b ḷ |\nc ' d |\n"
"""Two of the 8 reference symbols (ḷ and ') lie outside the Spanish dictionary."""


def write_inputs(folder: Path) -> None:
    """Manifest folders for es and ast, and a pretraining-shaped checkpoint."""
    for language, symbols in DICTIONARIES.items():
        for name in MANIFEST_FILES:
            path = folder / "corpus" / language / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{language} {name}\n")
        (folder / "corpus" / language / "dict.ltr.txt").write_text("".join(f"{s} 1\n" for s in symbols.split()))
    (folder / "corpus" / "ast" / "test.ltr").write_text(AST_TEST)
    (folder / "corpus" / "es" / "test.ltr").write_text("a b |\n")
    for name in MANIFEST_FILES:  # Russian, in another alphabet: never a valid out-of-domain language for es
        (folder / "corpus" / "ru" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "corpus" / "ru" / name).write_text("б 1\nв 1\n" if name == "dict.ltr.txt" else "ru\n")
    (folder / "corpus" / "ru" / "test.ltr").write_text("б в |\nв |\n")
    torch.save({"model": {"encoder.layers.0.fc1.weight": torch.zeros(4, 4)}}, folder / "pretrained.pt")


def write_grid(folder: Path, *lines: str, tuner_lr: float = 0.005) -> Path:
    """A small grid on write_inputs' files; each of `lines` is appended as it is."""
    grid = folder / "grid.yaml"
    grid.write_text("\n".join([
        "method: liu2023", "name: test", f"data: {folder / 'corpus'}", f"pretrained: {folder / 'pretrained.pt'}",
        "language: es", "out_of_domain: [ast]", "updates: 300",
        "full: {lr: 0.0005}",
        f"tuners: {{methods: [lora, adalora, s2lora], lr: {tuner_lr}}}",
        *lines,
    ]) + "\n")
    return grid


@pytest.fixture
def inputs(tmp_path):
    write_inputs(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------- grid validation

BAD_GRIDS = {  # case: (line replacing its section's line of write_grid, what follows "GRID:LINE: ")
    "unknown key": ("full: {lr: 0.001, overides: []}", "full.overides: unknown key (did you mean full.overrides?)"),
    "unknown method": ("tuners: {methods: [lora, prefix_tuning]}",
                       "tuners.methods: unknown method 'prefix_tuning' (known: lora, alpha_lora, adalora, glora, "
                       "bitfit, ia3, s2lora, dora, vera)"),
    "target rank above the initial": ("rank_map: {init_r: 4, target_r: 8}",
                                      "rank_map.target_r: 8 is above init_r 4"),
    "rank map on an unknown matrix": ("rank_map: {targets: 'q,gate'}", "rank_map.targets: unknown module kind 'gate'"),
    "too few updates for AdaLoRA's schedule": ("updates: 200", "updates: AdaLoRA's schedule in adalora_tiny.yaml: total_updates 200 leaves no update between warmup (60) and the final phase (180)"),
    "training language evaluated as out of domain": ("out_of_domain: [ast, es]",
                                                     "out_of_domain: 'es' is the training language"),
    "language without manifests": ("out_of_domain: [pl]", "out_of_domain: language 'pl': missing manifest"),
    "out-of-domain language in another alphabet": (
        "out_of_domain: [ast, ru]", "out_of_domain: language 'ru': 2 of 2 test transcripts ("),
    "no language": ("language: ''", "language: name the language every run trains on"),
    "lr not a number": ("full: {lr: fast}", "full.lr: expected a number, got 'fast'"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_a_bad_grid_fails_naming_the_file_line_and_key(inputs, capsys, case):
    line, message = BAD_GRIDS[case]
    assert_refused_with_line_replaced(write_grid(inputs), line, message, capsys)


def test_the_shipped_example_grid_is_valid_and_dry_runs(inputs, capsys):
    """On write_inputs' corpus and checkpoint instead of the S3-Router miniature's run folder."""
    example = example_grid_on(inputs, "liu2023")
    spec = load_grid(example)
    assert spec.tuners.methods == list(liu2023.spec.tuner_methods()) and spec.out_of_domain == ["ast"]
    assert cli(["grid", str(example), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert {"full-es", "s2lora-es-on-ast", "alpha-lora-es", "adalora-rankmap-es"} <= set(out)
    assert out[-1] == "22 cells: 11 in-domain, 11 out-of-domain, 0 other"


# ------------------------------------------------------------------------------- running the grid


class FakeRun:
    """The grid's runner: stands in for fairseq-hydra-train (saves a TINY CTC model with the config's tuner, its
    parameters moved off their start so that S2-LoRA and AdaLoRA have ranks) and fairseq-generate."""

    def __init__(self):
        self.trained, self.decoded = {}, []

    def hydra_train(self, config, overrides, log_path, **options):
        config_name = config.name
        save_dir = Path(next(item.split("=", 1)[1] for item in overrides if item.startswith("checkpoint.save_dir=")))
        self.trained[save_dir] = (config_name, overrides)
        model = ctc_model(seed=len(self.trained))
        if config_name != "tiny":
            tuner_options = {item.split("=", 1)[0][len("model.tuner_"):]: item.split("=", 1)[1].strip("'")
                             for item in overrides if item.startswith("model.tuner_")}
            tuner_options = {key: value if key == "targets" else int(value) for key, value in tuner_options.items()}
            if config_name == "adalora_tiny":  # the shipped config's total is ${optimization.max_update}
                tuner_options.setdefault("total_updates", int(next(
                    item.split("=", 1)[1] for item in overrides if item.startswith("optimization.max_update="))))
            inject_tuner(model, tuner_config(config_name[: -len("_tiny")], **tuner_options), W2V_PREFIX)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if ".parametrizations." in name and ".original" not in name:
                        parameter.add_(0.1)
        torch.save({"model": model.state_dict()}, save_dir / "checkpoint_last.pt")
        log_path.write_text("done training\n")
        return "done training"

    def generate(self, data_dir, checkpoint, subset, results_dir, threads=None, task_args=()):
        self.decoded.append((Path(results_dir).parent, Path(data_dir), Path(checkpoint)))
        return SimpleNamespace(cer=10.0, wer=20.0, hypotheses=2)

    def clear(self):
        self.__init__()


@pytest.fixture
def fake(inputs):
    return FakeRun()


def run_grid(folder: Path, fake: FakeRun, config_root=None, **grid_options) -> liu2023.GridRun:
    fake.clear()
    return run_method_grid(liu2023, write_grid(folder, **grid_options), folder / "out", fake, config_root=config_root)


TRAINED = ["full-es", "lora-es", "adalora-es", "s2lora-es", "adalora-rankmap-es"]
TUNED = TRAINED[1:]


def test_the_grid_trains_every_method_counts_and_ranks_it_and_decodes_it_out_of_domain(inputs, fake):
    run = run_grid(inputs, fake)
    cells = {cell.name: cell for cell in run.cells}
    assert sorted(cells) == sorted(TRAINED + [f"{name}-on-ast" for name in TRAINED])
    assert all(cells[f"{name}-on-ast"].after == [name] for name in TRAINED)

    by_folder = {Path(cell.directory): name for name, cell in cells.items()}
    trained = {by_folder[folder]: value for folder, value in fake.trained.items()}
    assert {name: config for name, (config, _) in trained.items()} == {
        "full-es": "tiny", "lora-es": "lora_tiny", "adalora-es": "adalora_tiny", "s2lora-es": "s2lora_tiny",
        "adalora-rankmap-es": "adalora_tiny"}
    assert {"optimization.lr=[0.0005]", "optimization.max_update=300"} <= set(trained["full-es"][1])
    assert {"optimization.lr=[0.005]", "optimization.max_update=300"} <= set(trained["s2lora-es"][1])
    assert {"model.tuner_targets='all'", "model.tuner_init_r=8", "model.tuner_target_r=4"} <= set(
        trained["adalora-rankmap-es"][1])
    assert not any(item.startswith("model.tuner_") for item in trained["adalora-es"][1])

    decoded = {by_folder[folder]: (data, checkpoint) for folder, data, checkpoint in fake.decoded}
    ood_data = inputs / "out" / "out-of-domain" / "lora-es-on-ast" / "data"
    assert decoded["lora-es-on-ast"] == (ood_data, Path(cells["lora-es"].directory) / "checkpoint_last.pt")
    assert (ood_data / "test.ltr").read_text() == "a b |\nc d |\n"  # in the Spanish alphabet
    assert not [problem for problem in check_manifest_dir(ood_data) if "characters not in" in str(problem)]
    assert (ood_data / "dict.ltr.txt").read_text() == (inputs / "corpus" / "es" / "dict.ltr.txt").read_text()

    rows = {row["cell"]: row for row in csv.DictReader((inputs / "out" / "results.csv").open())}
    assert list(rows) == [cell.name for cell in run.cells]
    assert all(row["cer"] == "10.0" for row in rows.values())
    assert rows["lora-es-on-ast"]["unknown_characters"] == "0.25" and rows["lora-es"]["unknown_characters"] == "0.0"
    assert rows["lora-es-on-ast"]["domain"] == "out" and rows["lora-es"]["domain"] == "in"
    backbone = int(rows["full-es"]["backbone_params"])
    assert int(rows["full-es"]["trainable_params"]) == backbone and float(rows["full-es"]["trainable_percent"]) == 100
    shapes = {name: tuple(shape) for name, shape in encoder_shapes(**TINY).items()}
    expected = {"lora-es": tuner_config("lora"), "s2lora-es": tuner_config("s2lora"),
                "adalora-es": tuner_config("adalora", total_updates=1),
                "adalora-rankmap-es": tuner_config("adalora", total_updates=1, targets="all", init_r=8, target_r=4)}
    for name, config in expected.items():
        chosen = {key: shape for key, shape in shapes.items() if config.selection().selects(key)}
        assert int(rows[name]["trainable_params"]) == config.trainable_count(chosen), name
        assert rows[f"{name}-on-ast"]["trainable_params"] == rows[name]["trainable_params"]
    assert float(rows["s2lora-es"]["trainable_percent"]) == pytest.approx(
        100 * int(rows["s2lora-es"]["trainable_params"]) / backbone, abs=1e-4)

    ranks = list(csv.DictReader((inputs / "out" / "ranks.csv").open()))
    assert sorted({row["cell"] for row in ranks}) == sorted(TUNED)
    lora = [row for row in ranks if row["cell"] == "lora-es"]
    assert [row["layer"] for row in lora] == ["0", "1"]
    assert all(row["q"] == row["v"] == "8" and row["k"] == row["fc1"] == "" for row in lora)
    assert all(row[kind] == "8" for row in ranks if row["cell"] == "s2lora-es" for kind in KINDS)
    assert rows["s2lora-es"]["ranks_in_use"] == str(8 * len(KINDS) * TINY["layers"]) and rows["full-es"]["ranks_in_use"] == ""

    written = liu2023.write_report(inputs / "out", inputs / "report")
    report = written[-1].read_text()
    assert "Skipped" not in report and "| lora | " in report and "ranks_s2lora-es.png" in report

    run_grid(inputs, fake)
    assert fake.trained == {} and fake.decoded == []
    run_grid(inputs, fake, tuner_lr=0.002)
    assert sorted(by_folder[folder] for folder in fake.trained) == sorted(TUNED)
    assert len(fake.decoded) == 2 * len(TUNED)


def test_an_edited_config_file_reruns_exactly_the_cells_training_with_it(inputs, fake, monkeypatch):
    """On a copy of the shipped configs: LoRA's tuner/lora.yaml (in its technique folder) is pulled
    in by lora_tiny.yaml alone, so editing it reruns the LoRA run and its out-of-domain decoding;
    tiny.yaml is pulled in by every run's config; and a new package version reruns every cell."""
    configs = copy_shipped_configs(inputs / "package")
    cells = run_grid(inputs, fake, config_root=configs).cells
    by_folder = {Path(cell.directory): cell.name for cell in cells}
    assert {config for config, _ in fake.trained.values()} == {
        "tiny", "lora_tiny", "adalora_tiny", "s2lora_tiny"}

    def rerun():
        run_grid(inputs, fake, config_root=configs)
        return (sorted(by_folder[folder] for folder in fake.trained),
                sorted(by_folder[folder] for folder, _, _ in fake.decoded))

    assert rerun() == ([], [])
    lora = inputs / "package" / "techniques" / "tuners" / "lora" / "configs" / "tuner" / "lora.yaml"
    lora.write_text(lora.read_text().replace("tuner_r: 8", "tuner_r: 4"))
    assert rerun() == (["lora-es"], ["lora-es", "lora-es-on-ast"])
    tiny = configs / "finetune" / "tiny.yaml"
    tiny.write_text(tiny.read_text() + "# edited\n")
    assert rerun() == (sorted(TRAINED), sorted(by_folder.values()))
    assert rerun() == ([], [])
    monkeypatch.setattr(fairseq_subnets, "__version__", fairseq_subnets.__version__ + ".post1")
    assert rerun() == (sorted(TRAINED), sorted(by_folder.values()))


def test_results_csv_holds_every_finished_cell_whatever_was_interrupted(inputs, fake):
    """The grid is run, its results files lost, and `full.lr` changed: when the rerun's first cell
    (full fine-tuning, first in plan order) starts training, results.csv already lists every
    finished tuner cell and only a placeholder for the changed cells (their old rows would point at
    outputs about to be replaced); the rerun then fails there, and the file still holds them all."""
    run_grid(inputs, fake)
    for name in ("results.csv", "results.json"):
        (inputs / "out" / name).unlink()
    seen = []

    def killed(config, overrides, log_path, **options):
        seen.append({row["cell"]: row["cer"] for row in csv.DictReader((inputs / "out" / "results.csv").open())})
        raise RuntimeError("killed")

    fake.clear()
    fake.hydra_train = killed
    grid = write_grid(inputs)
    grid.write_text(grid.read_text().replace("full: {lr: 0.0005}", "full: {lr: 0.0002}"))
    with pytest.raises(CellFailed, match="cell full-es failed: killed"):
        run_method_grid(liu2023, grid, inputs / "out", fake)
    changed = {"full-es", "full-es-on-ast"}
    finished = {f"{name}{suffix}": "10.0" for name in TUNED for suffix in ("", "-on-ast")}
    assert seen[0] == {**finished, **dict.fromkeys(changed, "")}
    rows = {row["cell"]: row["cer"] for row in csv.DictReader((inputs / "out" / "results.csv").open())}
    assert rows == seen[0]


# ------------------------------------------------------------------------------------------ report

RESULTS = """cell,method,setting,language,eval_language,domain,cer,wer,unknown_characters,trainable_params,trainable_percent,head_params
full-es,full,every weight,es,es,in,40.0,90.0,0.0,1000000,100.0,5000
full-es-on-ast,full,every weight,es,ast,out,70.0,99.0,0.01,1000000,100.0,5000
lora-es,lora,paper,es,es,in,78.25,95.0,0.0,12000,1.2,5000
lora-es-on-ast,lora,paper,es,ast,out,,,,12000,1.2,5000
adalora-rankmap-es,adalora,"all, rank 8 to 4 (Fig. 3)",es,es,in,80.0,96.0,0.0,20000,2.0,5000
"""
RANKS = """cell,method,setting,layer,q,k,v,out,fc1,fc2
adalora-rankmap-es,adalora,"all, rank 8 to 4 (Fig. 3)",0,1,0,6,8,2,3
adalora-rankmap-es,adalora,"all, rank 8 to 4 (Fig. 3)",1,0,0,4,5,2,1
lora-es,lora,paper,0,8,,8,,,
"""


def test_the_report_draws_table_2_and_the_rank_maps_from_hand_made_results(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS)
    (tmp_path / "ranks.csv").write_text(RANKS)
    written = liu2023.write_report(tmp_path, tmp_path / "report")
    assert {"table2.md", "table2.csv", "ranks_adalora-rankmap-es.md", "ranks_adalora-rankmap-es.png",
            "ranks_lora-es.png"} <= {path.name for path in written}
    report = written[-1].read_text()
    assert "| method | trainable | trainable_% | in:es | out:ast |" in report
    assert "| full | 1000000 | 100.0000 | 40.00 | 70.00 |" in report
    assert "| lora | 12000 | 1.2000 | 78.25 | – |" in report
    assert "| adalora (all, rank 8 to 4 (Fig. 3)) | 20000 | 2.0000 | 80.00 | – |" in report
    assert "ast: 1.00% of its reference characters are outside the training dictionary" in report
    assert "| 0 | 1 | 0 | 6 | 8 | 2 | 3 |" in report and "| 0 | 8 | – | 8 | – | – | – |" in report
    assert "32 ranks in use in all" in report


def test_a_bad_results_row_is_named_by_file_line_and_column(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS.replace("lora-es-on-ast,lora,paper,es,ast,out",
                                                          "lora-es-on-ast,lora,paper,es,ast,in"))
    with pytest.raises(ResultsError, match=r"results.csv:5: column domain: 'in', but the row trains on 'es' and "
                                           r"decodes 'ast'"):
        liu2023.write_report(tmp_path, tmp_path / "report")
    (tmp_path / "results.csv").write_text(RESULTS)
    (tmp_path / "ranks.csv").write_text(RANKS.replace(",0,1,0,6,8,2,3", ",0,1.5,0,6,8,2,3"))
    with pytest.raises(ResultsError, match=r"ranks.csv:2: column q: '1.5' is not a rank"):
        liu2023.write_report(tmp_path, tmp_path / "report")
