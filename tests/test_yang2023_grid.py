"""The ASR Pathways comparison (Yang et al. 2023) grid: bad grid files refused before anything
runs, naming the file, line and key; the whole grid through the real engine and cells with a
stand-in for fairseq as the grid's runner (training writes the pruning runs' final masks as real
mask files, decoding returns fixed rates), so the random masks, the pathways' mask files, the mask
overlaps and the caching are the real code's; and the report drawn from hand-made results."""
import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fairseq_subnets.cli.main import main as cli
from fairseq_subnets.core import stats
from fairseq_subnets.core.maskfile import load_mask_file, save_mask_file
from fairseq_subnets.core.pruning import random_masks
from fairseq_subnets.engine.grid_file import MANIFEST_FILES
from fairseq_subnets.engine.report import ResultsError
from fairseq_subnets.experiments import yang2023
from fairseq_subnets.experiments.yang2023.spec import load_grid
from grid_files import assert_refused_with_line_replaced, example_grid_on, run_method_grid
from factory import encoder_shapes

LANGUAGES = ("es", "ca", "ast")
SHAPES = encoder_shapes(layers=2, width=16, ffn=32)
"""Every prunable matrix of a small 2-layer encoder: random masks cover all of them, as the schedule's do."""


def write_inputs(folder: Path) -> None:
    """Manifest folders for three languages, and a pretraining-shaped checkpoint of two matrices."""
    for language in LANGUAGES:
        for name in MANIFEST_FILES:
            path = folder / "corpus" / language / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{language} {name}\n")
    generator = torch.Generator().manual_seed(0)
    torch.save({"model": {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}},
               folder / "pretrained.pt")


def write_grid(folder: Path, *lines: str, interval: int = 50) -> Path:
    grid = folder / "grid.yaml"
    grid.write_text("\n".join([
        "method: yang2023", "name: test", f"data: {folder / 'corpus'}", f"pretrained: {folder / 'pretrained.pt'}",
        "languages: [es, ca, ast]", "group_lasso: [0.0, 0.01]",
        f"pruning: {{updates: 300, interval: {interval}, fraction: 0.2, target_sparsity: 0.6}}",
        "theta0: {updates: 500, lr: 0.002}", "multilingual: {updates: 400, lr: 0.002}", *lines,
    ]) + "\n")
    return grid


@pytest.fixture
def inputs(tmp_path):
    write_inputs(tmp_path)
    return tmp_path


BAD_GRIDS = {  # case: (line replacing its key's line of write_grid, what follows "GRID:LINE: ")
    "one language": ("languages: [es]", "languages: pathways share weights between languages: name two or more"),
    "negative group lasso": ("group_lasso: [0.0, -0.1]", "group_lasso: -0.1 is negative"),
    "fraction of one": ("pruning: {fraction: 1.0}", "pruning.fraction: the share of the remaining weights pruned"),
    "interval of zero": ("pruning: {interval: 0}", "pruning.interval: must be at least 1, got 0"),
    "unknown criterion": ("pruning: {criterion: l0}", "pruning.criterion: 'l0': choose one of magnitude, block"),
    "monolingual budget before the target": ("pruning: {updates: 200}", "pruning.updates: 200 ends before the last "
                                             "pruning event (update 250: 5 events every 50 updates)"),
    "multilingual budget before the target": ("multilingual: {updates: 100}", "multilingual.updates: 100 ends before "
                                              "the last pruning event"),
    "negative alpha": ("multilingual: {alpha: -1.0}", "multilingual.alpha: -1 is negative"),
    "language without manifests": ("languages: [es, pl]", "languages: language 'pl': missing manifest"),
    "unknown key": ("pruning: {intervals: 5}", "pruning.intervals: unknown key (did you mean pruning.interval?)"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_a_bad_grid_fails_naming_the_file_line_and_key(inputs, capsys, case):
    line, message = BAD_GRIDS[case]
    assert_refused_with_line_replaced(write_grid(inputs), line, message, capsys)


def test_the_shipped_example_grid_is_valid_and_dry_runs(inputs, capsys):
    """The example reads the S3-Router miniature's run folder; write_inputs' files stand in for it."""
    example = example_grid_on(inputs, "yang2023")
    spec = load_grid(example)
    assert spec.languages == list(LANGUAGES) and spec.group_lasso == [0.0, 0.001, 0.01]
    assert cli(["grid", str(example), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert {"theta0-gl0", "dense-gl0.01", "lsp-lth-gl0.01-ast", "pathways-imp-gl0-on-ca", "masks-random",
            "random-masks"} <= set(out)
    assert out[-1] == ("81 cells: 3 pathways-random, 9 dense, 9 lap, 9 lsp-imp, 9 pathways-imp, 9 lsp-lth, "
                       "9 pathways-lth, 24 other")
    seed2 = load_grid(example_grid_on(inputs, "yang2023", "grid_seed2.yaml"))
    assert (seed2.seed, seed2.group_lasso) == (2, [0.0])
    assert (seed2.theta0, seed2.pruning, seed2.multilingual) == (spec.theta0, spec.pruning, spec.multilingual)


def test_the_shipped_examples_stand_alone_and_pretrain_alike(tmp_path):
    """Every miniature synthesizes its corpus and pretrains its own model, with the same pretraining
    work as the fu2022 miniature (whose pretrained model made the liu2023 and yang2023 results): the
    same config, corpus, updates and seed, the seed-2 grid included. Given one shared folder (as
    `fairseq-subnets grid` gives them: `shared` beside their output folders), they plan the same
    corpus folder and the same pretrain cell, so whichever runs first makes them and the others
    reuse them (tests/test_shared_grid_cells.py runs that)."""
    from fairseq_subnets.engine.cells import work_description
    from fairseq_subnets.engine.grid_plan import PRETRAIN_CELL
    from fairseq_subnets.experiments import fu2022, liu2023, storey2025

    examples = Path(__file__).resolve().parents[1] / "examples"
    pretraining, corpora, folders = [], set(), set()
    for method, name in ((fu2022, "fu2022/grid.yaml"), (liu2023, "liu2023/grid.yaml"),
                         (yang2023, "yang2023/grid.yaml"), (yang2023, "yang2023/grid_seed2.yaml"),
                         (storey2025, "storey2025/grid.yaml")):
        spec = method.load_grid(examples / name)
        assert (spec.corpus, spec.data, spec.pretrained) == ("storey2025", None, None), name
        cells = {cell.name: cell for cell in method.GridRun(spec, tmp_path / "run").cells}
        pretraining.append(work_description(cells[PRETRAIN_CELL].work))
        run = method.GridRun(spec, tmp_path / spec.name, shared_dir=tmp_path / "shared")
        corpora.add(run.corpus_dir())
        folders.add(next(cell.directory for cell in run.cells if cell.name == PRETRAIN_CELL))
    assert pretraining[0]["args"][2:] == [600, 1]  # updates, seed
    assert all(work == pretraining[0] for work in pretraining)
    assert len(corpora) == len(folders) == 1 and next(iter(folders)).parent == tmp_path / "shared"
    assert next(iter(corpora)).parent == tmp_path / "shared" / "corpora"
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # planning writes nothing


class FakeRun:
    """The grid's runner: stands in for fairseq-hydra-train (a pruning run writes pruned.mask: a random mask at the
    target sparsity, seeded by its folder, over the pretrained checkpoint's matrices) and
    fairseq-generate."""

    def __init__(self):
        self.trained, self.decoded = {}, []

    def hydra_train(self, config, overrides, log_path, **options):
        save_dir = Path(next(item.split("=", 1)[1] for item in overrides if item.startswith("checkpoint.save_dir=")))
        self.trained[save_dir.name] = (config.name, overrides)
        (save_dir / "checkpoint_last.pt").write_bytes(b"checkpoint")
        if any("pruning_interval" in item for item in overrides):
            save_mask_file(str(save_dir / "pruned.mask"), random_masks(SHAPES, 0.6, seed=len(self.trained)))
        log_path.write_text("done training\n")
        return "done training"

    def generate(self, data_dir, checkpoint, subset, results_dir, threads=None, task_args=()):
        self.decoded.append((Path(results_dir).parent.name, Path(data_dir), Path(checkpoint), tuple(task_args)))
        return SimpleNamespace(cer=10.0, wer=20.0, hypotheses=2)

    def clear(self):
        self.__init__()


@pytest.fixture
def fake(inputs):
    return FakeRun()


def run_grid(folder: Path, fake: FakeRun, **grid_options) -> yang2023.GridRun:
    fake.clear()
    return run_method_grid(yang2023, write_grid(folder, **grid_options), folder / "out", fake)


def test_the_grid_trains_every_model_on_the_right_masks_and_measures_their_overlap(inputs, fake):
    run_grid(inputs, fake)
    out = inputs / "out"
    configs = {name: config for name, (config, _) in fake.trained.items()}
    assert configs["theta0-gl0"] == configs["dense-gl0"] == configs["lap-gl0.01"] == "multilingual_tiny"
    assert configs["lsp-imp-gl0-ca"] == "imp_tiny" and configs["lsp-lth-gl0.01-ast"] == "lth_tiny"
    assert configs["pathways-random"] == configs["pathways-lth-gl0"] == "pathways_tiny"
    overrides = {name: set(items) for name, (_, items) in fake.trained.items()}
    assert {"+model.pruning_interval=50", "+model.group_lasso_strength=0.01", "task.languages=[es,ca,ast]",
            "optimization.max_update=400", "optimization.lr=[0.002]"} <= overrides["lap-gl0.01"]
    assert {"model.pruning_interval=50", "model.pruning_fraction=0.2", "model.pruning_target_sparsity=0.6",
            "model.group_lasso_strength=0.0", "optimization.max_update=300",
            f"task.data={inputs / 'corpus' / 'ca'}"} <= overrides["lsp-imp-gl0-ca"]
    assert {"lr_scheduler.warmup_steps=5", "lr_scheduler.hold_steps=30",
            "lr_scheduler.decay_steps=15"} <= overrides["lsp-lth-gl0-es"]
    assert not any("pruning" in item or "lr_scheduler" in item for item in overrides["dense-gl0.01"])
    assert "+model.group_lasso_strength=0.01" in overrides["dense-gl0.01"]
    assert {"optimization.max_update=500", "+model.group_lasso_strength=0.01"} <= overrides["theta0-gl0.01"]
    assert not any("init_from" in item for item in overrides["theta0-gl0"] | overrides["theta0-gl0.01"])

    def started_from(name):
        return next(item.split("=", 1)[1] for item in overrides[name] if item.startswith("+model.init_from="))

    train = out / "train"
    for name in ("dense-gl0.01", "lap-gl0.01", "lsp-lth-gl0.01-ast", "pathways-imp-gl0.01"):
        assert started_from(name) == str(train / "theta0-gl0.01" / "checkpoint_last.pt"), name
    assert started_from("pathways-random") == started_from("lsp-imp-gl0-ca") == str(
        train / "theta0-gl0" / "checkpoint_last.pt")
    assert "+model.init_from_language=ca" in overrides["lsp-imp-gl0-ca"]
    assert not any("init_from_language" in item for item in overrides["lap-gl0"] | overrides["pathways-lth-gl0"])

    def mask_files(name):
        item = next(item for item in overrides[name] if item.startswith("model.language_mask_files="))
        return dict(entry.split(":", 1) for entry in item.split("=", 1)[1].strip("[]").split(","))

    assert mask_files("pathways-imp-gl0.01") == {language: str(train / f"lsp-imp-gl0.01-{language}" / "pruned.mask")
                                                 for language in LANGUAGES}
    assert mask_files("pathways-random") == {language: str(out / "random-masks" / f"{language}.mask")
                                             for language in LANGUAGES}
    random = {language: load_mask_file(path).masks for language, path in mask_files("pathways-random").items()}
    assert all(stats.sparsity(masks) == pytest.approx(0.6, abs=0.01) for masks in random.values())
    assert not torch.equal(random["es"]["encoder.layers.0.fc1.weight"], random["ca"]["encoder.layers.0.fc1.weight"])
    assert random["es"].keys() == SHAPES.keys()

    decodes = {name: (data, task_args) for name, data, _, task_args in fake.decoded}
    assert decodes["pathways-lth-gl0-on-ast"] == (inputs / "corpus", (
        "--task", "subnets_multilingual_finetuning", "--languages", "es,ca,ast", "--decode-language", "ast"))
    assert decodes["lsp-imp-gl0-es"][0] == inputs / "corpus" / "es"

    rows = {row["cell"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert len(rows) == 39 and all(row["cer"] == "10.0" for row in rows.values())
    assert rows["dense-gl0-on-es"]["group_lasso"] == "0.0" and rows["dense-gl0-on-es"]["sparsity"] == "0.0"
    assert rows["pathways-random-on-es"]["group_lasso"] == ""
    assert rows["pathways-random-on-ca"]["sparsity"] == str(round(stats.sparsity(random["ca"]), 6))
    assert rows["lsp-lth-gl0.01-ast"]["model"] == "lsp-lth" and rows["lsp-lth-gl0.01-ast"]["group_lasso"] == "0.01"

    overlaps = list(csv.DictReader((out / "masks.csv").open()))
    assert sorted({row["cell"] for row in overlaps}) == ["masks-imp-gl0", "masks-imp-gl0.01", "masks-lth-gl0",
                                                         "masks-lth-gl0.01", "masks-random"]
    pairs = {(row["a"], row["b"]): row for row in overlaps if row["cell"] == "masks-random"}
    assert float(pairs["es", "ca"]["iou"]) == pytest.approx(stats.iou(random["es"], random["ca"]), abs=1e-6)
    assert float(pairs["all", ""]["union_ratio"]) == pytest.approx(stats.union_ratio(list(random.values())), abs=1e-6)
    layers = list(csv.DictReader((out / "layer_sparsity.csv").open()))
    assert {row["layer"] for row in layers} == {"0", "1"} and len(layers) == 5 * 3 * 2

    written = yang2023.write_report(out, inputs / "report")
    report = written[-1].read_text()
    assert "Skipped" not in report and "iou_lth_gl0.01.png" in report and "| pathways-imp | 0.01 |" in report

    run_grid(inputs, fake)
    assert fake.trained == {} and fake.decoded == []
    run_grid(inputs, fake, interval=40)
    assert not {"theta0-gl0", "theta0-gl0.01", "dense-gl0", "pathways-random"} & set(fake.trained)
    assert "lsp-imp-gl0-es" in fake.trained and "pathways-lth-gl0.01" in fake.trained


RESULTS = """cell,model,group_lasso,language,cer,sparsity
dense-gl0-on-es,dense,0.0,es,30.0,0.0
dense-gl0-on-ast,dense,0.0,ast,60.0,0.0
lap-gl0-on-es,lap,0.0,es,35.0,0.6
lap-gl0-on-ast,lap,0.0,ast,,0.6
pathways-imp-gl0.01-on-es,pathways-imp,0.01,es,31.5,0.6
pathways-imp-gl0.01-on-ast,pathways-imp,0.01,ast,50.5,0.6
"""
MASKS = """cell,masks,group_lasso,a,b,iou,union_ratio
masks-imp-gl0.01,imp,0.01,es,ast,0.25,
masks-imp-gl0.01,imp,0.01,all,,,0.7
masks-random,random,,es,ast,0.2,
masks-random,random,,all,,,0.8
"""


def test_the_report_draws_tables_1_and_2_and_the_mask_overlaps_from_hand_made_results(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS)
    (tmp_path / "masks.csv").write_text(MASKS)
    written = yang2023.write_report(tmp_path, tmp_path / "report")
    assert {"cer.md", "overlap.csv", "overlap_summary.png", "iou_imp_gl0.01.png",
            "iou_random.png"} <= {path.name for path in written}
    report = written[-1].read_text()
    assert "| model | group lasso | sparsity | es | ast | average |" in report
    assert "| dense | without | 0.000 | 30.00 | 60.00 | 45.00 |" in report
    assert "| lap | without | 0.600 | 35.00 | – | 35.00 (1/2) |" in report
    assert "| pathways-imp | 0.01 | 0.600 | 31.50 | 50.50 | 41.00 |" in report
    assert "| IMP, group lasso 0.01 | 0.250 | 0.700 |" in report and "| RANDOM | 0.200 | 0.800 |" in report
    assert "Sparsity per layer" in report and "no layer_sparsity.csv rows beside results.csv" in report


def test_a_bad_results_row_is_named_by_file_line_and_column(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS.replace("lap-gl0-on-es,lap,0.0,", "lap-gl0-on-es,lap,,"))
    with pytest.raises(ResultsError, match=r"results.csv:4: column group_lasso: '', but lap has a group-lasso "
                                           r"setting"):
        yang2023.write_report(tmp_path, tmp_path / "report")
    (tmp_path / "results.csv").write_text(RESULTS + "dense-again-on-es,dense,0.0,es,31.0,0.0\n")
    with pytest.raises(ResultsError, match=r"results.csv:8: column cell: this model and language are already on line 2"):
        yang2023.write_report(tmp_path, tmp_path / "report")
    (tmp_path / "results.csv").write_text(RESULTS.replace("dense-gl0-on-es,dense,", "dense-gl0-on-es,sparse,"))
    with pytest.raises(ResultsError, match=r"results.csv:2: column model"):
        yang2023.write_report(tmp_path, tmp_path / "report")
