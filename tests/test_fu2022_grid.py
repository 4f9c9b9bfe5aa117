"""The S3-Router (Fu et al. 2022) grid: bad grid files refused before anything runs, naming the file,
line and key; the whole grid through the real engine, cells, pruning, mask files and similarity,
with a stand-in for fairseq as the grid's runner (training writes a checkpoint of random weights,
decoding returns fixed rates) and mask extraction and bundle building stubbed (the "learned" masks
are magnitude masks at the run's sparsity); and every report view drawn from hand-made results."""
import csv
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fairseq_subnets.cli.main import main as cli
from fairseq_subnets.core.maskfile import load_mask_file
from fairseq_subnets.core.targets import KINDS, weight_name
from fairseq_subnets.engine.grid_file import MANIFEST_FILES
from fairseq_subnets.engine.report import ResultsError
from fairseq_subnets.experiments import fu2022
from fairseq_subnets.experiments.fu2022.spec import GridError, load_grid
from fairseq_subnets.plugin.formats import bundles as plugin_bundles
from fairseq_subnets.plugin.tools import prune as plugin_prune
from fairseq_subnets.runner import SINGLE_LANGUAGE_TASK
from grid_files import assert_refused_with_line_replaced, run_method_grid

LAYERS = 2
WIDTH = 8
LANGUAGES = ("es", "ca", "en")
W2V_PREFIX = "w2v_encoder.w2v_model."


def fake_checkpoint(path, prefix, seed):
    generator = torch.Generator().manual_seed(seed)
    state = {prefix + weight_name(layer, kind): torch.randn(WIDTH, WIDTH, generator=generator)
             for layer in range(LAYERS) for kind in KINDS}
    torch.save({"model": state}, path)


def write_inputs(folder: Path) -> None:
    """Manifest folders, a 2-layer pretrained checkpoint and a language similarity matrix."""
    for language in LANGUAGES:
        for name in MANIFEST_FILES:
            path = folder / "corpus" / language / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{language} {name}\n")
    fake_checkpoint(folder / "pretrained.pt", "", seed=0)
    (folder / "languages.csv").write_text(",es,ca,en\nes,1,0.8,0.4\nca,0.8,1,0.5\nen,0.4,0.5,1\n")


def write_grid(folder: Path, *sections: str, s3router_lr: float = 0.001) -> Path:
    """A small grid on write_inputs' files; each of `sections` is a line appended as it is."""
    grid = folder / "grid.yaml"
    grid.write_text("\n".join([
        "method: fu2022", "name: test", f"data: {folder / 'corpus'}", f"pretrained: {folder / 'pretrained.pt'}",
        "languages: [es, ca, en]",
        "finetune: {updates: 5, lr: 0.0005}",
        f"s3router: {{updates: 5, lr: {s3router_lr}, sparsities: [0.1, 0.2], sparsity: 0.1}}",
        "ablation: {languages: [es], inits: [ri, ori], targets: [ffn, attn]}",
        "pruning: {languages: [es], sparsities: [0.5], updates: 4}",
        f"similarity: {{matrix: {folder / 'languages.csv'}}}",
        *sections,
    ]) + "\n")
    return grid


@pytest.fixture
def inputs(tmp_path):
    write_inputs(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------- grid validation

BAD_GRIDS = {  # case: (line appended to the grid, what follows "GRID:LINE: ")
    "unknown key": ("bundle: {languages: [es], langauges: [ca]}",
                    "bundle.langauges: unknown key (did you mean bundle.languages?)"),
    "sparsity 0": ("s3router: {sparsities: [0.0, 0.1]}",
                   "s3router.sparsities: 0.0 is outside (0, 1)"),
    "pruning sparsity 1": ("pruning: {sparsities: [0.5, 1.0]}", "pruning.sparsities: 1.0 is outside (0, 1)"),
    "unknown init": ("ablation: {inits: [ori, xavier]}",
                     "ablation.inits: unknown value 'xavier' (known: ori, wmi, ri)"),
    "unknown target": ("ablation: {targets: [ffn, mlp]}", "ablation.targets: unknown module kind 'mlp'"),
    "unknown scope": ("s3router: {scope: layer}", "s3router.scope: unknown value 'layer' (known: matrix, global)"),
    "layer beyond the encoder": ("s3router: {layers: '1-2'}",
                                 "s3router.layers: layer 2 is selected but pretrained"),
    "language outside the grid": ("bundle: {languages: [es, pl]}",
                                  "bundle.languages: 'pl' is not one of languages (es, ca, en)"),
    "too few languages to correlate": ("similarity: {languages: [es, ca], matrix: languages.csv}",
                                       "similarity.matrix: a correlation needs at least 3 languages"),
    "updates not an integer": ("finetune: {updates: many}", "finetune.updates: expected an integer, got 'many'"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_a_bad_grid_fails_naming_the_file_line_and_key(inputs, capsys, case):
    """The bad line replaces its section's line of write_grid (a section given twice is refused)."""
    line, message = BAD_GRIDS[case]
    assert_refused_with_line_replaced(write_grid(inputs), line, message, capsys)


def test_errors_give_the_line_of_the_key_and_a_matrix_must_hold_every_language(inputs):
    grid = write_grid(inputs)
    grid.write_text(grid.read_text().replace("pruning: {languages: [es], sparsities: [0.5], updates: 4}",
                                             "pruning:\n  languages: [es]\n  init: he"))
    with pytest.raises(GridError, match=rf"^{re.escape(str(grid))}:11: pruning.init: unknown value 'he'"):
        load_grid(grid)
    (inputs / "languages.csv").write_text(",es,ca\nes,1,0.8\nca,0.8,1\n")
    with pytest.raises(GridError, match=r"similarity.matrix: .*languages.csv: no column labelled 'en'"):
        load_grid(write_grid(inputs))


def test_the_shipped_example_grid_is_valid_and_dry_runs(capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "fu2022" / "grid.yaml"
    spec = load_grid(example)
    assert len(spec.bundle.languages) >= 3 and spec.similarity.matrix
    assert cli(["grid", str(example), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s3router-es-s0.1-ri-ffn" in out and "global-l1-es-s0.9" in out and "bundle-ast" in out


# ------------------------------------------------------------------------------- running the grid


class FakeRun:
    """The grid's runner (stands in for fairseq-hydra-train and fairseq-generate), and stand-ins for
    mask extraction and bundle building."""

    def __init__(self):
        self.trained, self.decoded, self.extracted, self.bundled = {}, [], [], []

    def hydra_train(self, config, overrides, log_path, **options):
        save_dir = Path(next(item.split("=", 1)[1] for item in overrides if item.startswith("checkpoint.save_dir=")))
        self.trained[save_dir] = (config.name, overrides)
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            fake_checkpoint(save_dir / name, W2V_PREFIX, seed=len(self.trained))
        log_path.write_text("\n".join(overrides) + "\ndone training\n")
        return "done training"

    def generate(self, data_dir, checkpoint, subset, results_dir, threads=None, task_args=()):
        self.decoded.append((Path(results_dir).parent, tuple(task_args)))
        return SimpleNamespace(cer=10.0, wer=20.0, hypotheses=3)

    def extract_checkpoint_masks(self, checkpoint, out):
        """The magnitude mask at the run's score_sparsity and targets (from the fake training log)."""
        settings = dict(line.split("=", 1) for line in (Path(checkpoint).parent / "train.log").read_text().splitlines()
                        if line.startswith("model.score_"))
        self.extracted.append(Path(checkpoint).parent)
        return plugin_prune.prune_checkpoint(checkpoint, out, "layer-l1", float(settings["model.score_sparsity"]),
                                             settings["model.score_targets"].strip("'"))

    def build_bundle(self, sources):
        self.bundled.append(dict(sources))
        return SimpleNamespace(languages=list(sources))

    @staticmethod
    def write_bundle(bundle, path):
        Path(path).write_bytes(b"bundle")

    @staticmethod
    def storage(bundle):
        return [plugin_bundles.LanguageStorage(language, 100, 200, 0.015, "") for language in bundle.languages]

    def clear(self):
        self.__init__()


@pytest.fixture
def fake(inputs, monkeypatch):
    """The grid's runner; mask extraction and bundle building are the plugin's offline tools."""
    fake = FakeRun()
    monkeypatch.setattr(plugin_prune, "extract_checkpoint_masks", fake.extract_checkpoint_masks)
    for name in ("build_bundle", "write_bundle", "storage"):
        monkeypatch.setattr(plugin_bundles, name, getattr(fake, name))
    return fake


def run_grid(folder: Path, fake: FakeRun, **grid_options) -> fu2022.GridRun:
    fake.clear()
    return run_method_grid(fu2022, write_grid(folder, **grid_options), folder / "out", fake)


REFERENCE = {language: f"s3router-{language}-s0.1-ori-ffn" for language in LANGUAGES}
LEARNED = sorted([*REFERENCE.values(), *(f"s3router-{language}-s0.2-ori-ffn" for language in LANGUAGES),
                  "s3router-es-s0.1-ri-ffn", "s3router-es-s0.1-ori-attn"])
FINETUNED = [f"finetune-{language}" for language in LANGUAGES]
PRUNING = ["s3router-p-es-s0.5", "global-l1-es-s0.5"]
BUNDLE_DECODES = [f"bundle-{language}" for language in LANGUAGES]


def test_the_grid_runs_every_cell_on_what_it_builds_on_and_reuses_them(inputs, fake):
    run = run_grid(inputs, fake)
    cells = {cell.name: cell for cell in run.cells}
    assert sorted(cells) == sorted(FINETUNED + LEARNED + PRUNING + BUNDLE_DECODES
                                   + ["mask-global-l1-es-s0.5", "bundle", "similarity"])
    assert cells["s3router-p-es-s0.5"].after == ["finetune-es"]
    assert cells["global-l1-es-s0.5"].after == ["finetune-es", "mask-global-l1-es-s0.5"]
    assert sorted(cells["bundle"].after) == sorted(REFERENCE.values())
    assert cells["bundle-ca"].after == ["bundle", REFERENCE["ca"]]
    assert sorted(cells["similarity"].after) == sorted(REFERENCE.values())

    by_folder = {Path(cell.directory): name for name, cell in cells.items()}
    trained = {by_folder[folder]: value for folder, value in fake.trained.items()}
    assert sorted(trained) == sorted(FINETUNED + LEARNED + PRUNING)
    assert {name for name, (config, _) in trained.items() if config == "tiny"} == {*FINETUNED, "global-l1-es-s0.5"}
    finetuned = str(inputs / "out" / "finetune" / "es" / "checkpoint_best.pt")
    assert {f"+model.init_from={finetuned}", "model.score_init=wmi", "model.score_targets='all'",
            "model.score_sparsity=0.5", "optimization.max_update=4"} <= set(trained["s3router-p-es-s0.5"][1])
    mask = inputs / "out" / "masks" / "es-s0.5" / "es-s0.5.mask"
    assert f"+model.mask_path={mask}" in trained["global-l1-es-s0.5"][1]
    assert "model.score_targets='attn'" in trained["s3router-es-s0.1-ori-attn"][1]
    assert sorted(by_folder[folder] for folder in fake.extracted) == sorted(LEARNED + ["s3router-p-es-s0.5"])
    assert fake.bundled == [{language: str(Path(cells[REFERENCE[language]].directory) / "checkpoint_best.pt")
                             for language in LANGUAGES}]
    bundle_decodes = {by_folder[folder]: arguments for folder, arguments in fake.decoded
                      if arguments != SINGLE_LANGUAGE_TASK}
    assert sorted(bundle_decodes) == sorted(BUNDLE_DECODES)
    assert bundle_decodes["bundle-ca"] == ("--task", "subnets_multilingual_finetuning", "--languages", "es,ca,en",
                                    "--decode-language", "ca")

    rows = list(csv.DictReader((inputs / "out" / "results.csv").open()))
    assert [row["cell"] for row in rows] == [cell.name for cell in run.cells if cell.row is not None]
    assert len(rows) == len(FINETUNED + LEARNED + PRUNING + BUNDLE_DECODES)
    assert all(row["cer"] == "10.0" for row in rows)
    by_cell = {row["cell"]: row for row in rows}
    assert by_cell["bundle-en"]["own_cer"] == "10.0" and by_cell["bundle-en"]["backbone_fraction"] == "0.015"
    assert float(by_cell["s3router-es-s0.2-ori-ffn"]["mask_sparsity"]) == pytest.approx(0.2, abs=0.02)
    assert load_mask_file(by_cell["global-l1-es-s0.5"]["mask_path"]).metadata["method"] == "global-l1"
    similarity = list(csv.DictReader((inputs / "out" / "similarity.csv").open()))
    assert {row["layer"] for row in similarity} == {"0", "1", "total"} and len(similarity) == 9
    assert {(row["a"], row["b"], row["language_similarity"]) for row in similarity if row["layer"] == "0"} == {
        ("es", "ca", "0.8"), ("es", "en", "0.4"), ("ca", "en", "0.5")}
    correlations = list(csv.DictReader((inputs / "out" / "correlation.csv").open()))
    assert [row["layer"] for row in correlations] == ["0", "1", "total"] and correlations[0]["pairs"] == "3"

    run_grid(inputs, fake)
    assert fake.trained == {} and fake.decoded == [] and fake.extracted == [] and fake.bundled == []

    run_grid(inputs, fake, s3router_lr=0.002)
    assert sorted(by_folder[folder] for folder in fake.trained) == LEARNED
    assert sorted(by_folder[folder] for folder, _ in fake.decoded) == sorted(LEARNED + BUNDLE_DECODES)
    assert len(fake.bundled) == 1


def test_a_changed_language_matrix_reruns_only_the_similarity(inputs, fake):
    run_grid(inputs, fake)
    (inputs / "languages.csv").write_text(",es,ca,en\nes,1,0.3,0.4\nca,0.3,1,0.5\nen,0.4,0.5,1\n")
    run_grid(inputs, fake)
    assert fake.trained == {} and fake.decoded == [] and fake.bundled == []
    similarity = list(csv.DictReader((inputs / "out" / "similarity.csv").open()))
    assert [row["language_similarity"] for row in similarity if row["a"] == "es" and row["b"] == "ca"] == ["0.3"] * 3


# ------------------------------------------------------------------------------------------ report

RESULTS = """cell,method,language,sparsity,init,targets,layers,cer,wer,own_cer,mask_bytes,head_bytes,backbone_fraction
finetune-es,weights,es,0.0,,,,40.0,90.0,,,,
finetune-en,weights,en,0.0,,,,50.0,95.0,,,,
s3router-es-s0.02-ori-ffn,s3router,es,0.02,ori,ffn,all,38.0,88.0,,,,
s3router-es-s0.1-ori-ffn,s3router,es,0.1,ori,ffn,all,37.5,87.0,,,,
s3router-en-s0.02-ori-ffn,s3router,en,0.02,ori,ffn,all,,,,,,
s3router-en-s0.1-ori-ffn,s3router,en,0.1,ori,ffn,all,49.0,94.0,,,,
s3router-es-s0.1-ri-ffn,s3router,es,0.1,ri,ffn,all,45.0,92.0,,,,
s3router-es-s0.1-wmi-ffn,s3router,es,0.1,wmi,ffn,all,41.0,90.0,,,,
s3router-es-s0.1-ori-attn,s3router,es,0.1,ori,attn,all,39.0,89.0,,,,
s3router-p-es-s0.5,s3router-p,es,0.5,wmi,all,all,42.0,91.0,,,,
global-l1-es-s0.5,global-l1,es,0.5,,all,all,44.0,93.0,,,,
s3router-p-es-s0.9,s3router-p,es,0.9,wmi,all,all,60.0,99.0,,,,
global-l1-es-s0.9,global-l1,es,0.9,,all,all,70.0,100.0,,,,
bundle-es,bundle,es,0.1,ori,ffn,all,37.5,87.0,37.5,14000,20000,0.016
bundle-en,bundle,en,0.1,ori,ffn,all,49.0,94.0,49.0,14100,20000,0.0161
"""
SIMILARITY = """layer,a,b,mask_cosine,language_similarity
0,es,en,0.91,0.4
0,es,ca,0.95,0.8
0,en,ca,0.90,0.5
total,es,en,0.92,0.4
total,es,ca,0.93,0.8
total,en,ca,0.91,0.5
"""
CORRELATION = "layer,pearson,spearman,pairs\n0,0.97,1.0,3\ntotal,0.86,1.0,3\n"


def test_the_report_draws_every_view_from_hand_made_results(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS)
    (tmp_path / "similarity.csv").write_text(SIMILARITY)
    (tmp_path / "correlation.csv").write_text(CORRELATION)
    written = fu2022.write_report(tmp_path, tmp_path / "report")
    names = {path.name for path in written}
    assert {"cer_s3router_vs_weights.md", "wer_s3router_vs_weights.csv", "cer_vs_sparsity_es.png",
            "cer_vs_sparsity_en.png", "init_table.md", "targets_table.md", "pruning_table.md", "pruning_es.png",
            "bundle_storage.md", "mask_similarity.md", "mask_similarity_correlation.md", "mask_similarity_0.png",
            "mask_similarity_total.png", "language_similarity.png", "mask_vs_language_similarity.png"} <= names
    assert written[-1].name == "report.md"
    report = written[-1].read_text()
    assert "Skipped" not in report
    assert "| es | ori, ffn | 40.00 | 38.00 | 37.50 |" in report
    assert "| en | ori, ffn | 50.00 | – | 49.00 |" in report
    assert "| es | 0.1 | ffn | 40.00 | 45.00 | 41.00 | 37.50 |" in report  # ri, wmi, ori
    assert "| es | 0.1 | ori | 40.00 | 37.50 | 39.00 |" in report  # ffn, attn
    assert "| es | 0.1 | ori, ffn | 14000 | 20000 | 1.60 | 37.50 | 37.50 | yes |" in report


def test_a_bad_results_row_is_named_by_file_line_and_column(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS.replace("s3router-p,es,0.5,wmi", "s3router-p,es,0.5,"))
    with pytest.raises(ResultsError, match=r"results.csv:11: column init: empty"):
        fu2022.write_report(tmp_path, tmp_path / "report")
