"""Grids share their corpus and pretrained model through the cache: with a shared folder, a grid
synthesizes its `corpus:` and pretrains its model there, in folders named by what makes them, so a
second grid that needs the same finds them made and makes nothing again, and one that needs them
otherwise (or runs first) makes its own. Real liu2023 cells and engine, a real (tiny) synthesized
corpus, and test_liu2023_grid's stand-in for fairseq as the grids' runner."""
import threading
from pathlib import Path

import pytest

from fairseq_subnets.engine.folder_locks import FolderLock
from fairseq_subnets.engine.grid_plan import PRETRAIN_CELL
from fairseq_subnets.engine.scheduler import CellBusy
from fairseq_subnets.experiments import liu2023
from grid_files import run_method_grid
from test_data_synth import write_definition
from test_liu2023_grid import FakeRun


def write_grid(folder: Path, definition: Path, name: str, methods: str, pretrain_updates: int = 600) -> Path:
    """A liu2023 grid on the tiny corpus definition, pretraining its own model."""
    grid = folder / f"{name}.yaml"
    grid.write_text("\n".join([
        "method: liu2023", f"name: {name}", f"corpus: {definition}", f"pretrain_updates: {pretrain_updates}", "seed: 1",
        "language: es", "out_of_domain: [ca]", "updates: 300", "full: {lr: 0.0005}",
        f"tuners: {{methods: [{methods}], lr: 0.005}}",
    ]) + "\n")
    return grid


def audio_stamps(corpus: Path) -> dict:
    return {path: path.stat().st_mtime_ns for path in (corpus / "audio").rglob("*.wav")}


def trained_cells(run, fake) -> list:
    """The names of the run's cells that the stand-in trained."""
    return sorted(cell.name for cell in run.cells if Path(cell.directory) in fake.trained)


def pretrain_cell(run):
    return next(cell for cell in run.cells if cell.name == PRETRAIN_CELL)


@pytest.fixture(scope="module")
def definition(tmp_path_factory):
    return write_definition(tmp_path_factory.mktemp("definition"))


def test_a_grid_reuses_the_corpus_and_pretrained_model_another_grid_made(tmp_path, definition):
    shared, fake = tmp_path / "shared", FakeRun()
    first = run_method_grid(liu2023, write_grid(tmp_path, definition, "first", "lora"), tmp_path / "first", fake,
                            shared_dir=shared)
    corpus, pretrain = first.corpus_dir(), pretrain_cell(first).directory
    assert corpus.parent == shared / "corpora" and corpus.name.startswith("tiny-") and (corpus / "corpus.json").is_file()
    assert pretrain.parent == shared and pretrain.name.startswith("pretrain-") and pretrain in fake.trained
    assert not (tmp_path / "first" / "corpus").exists() and not (tmp_path / "first" / PRETRAIN_CELL).exists()
    stamps = audio_stamps(corpus)
    assert stamps

    fake.clear()
    second = run_method_grid(liu2023, write_grid(tmp_path, definition, "second", "s2lora"), tmp_path / "second",
                             fake, shared_dir=shared)
    assert second.corpus_dir() == corpus and pretrain_cell(second).directory == pretrain
    assert audio_stamps(corpus) == stamps  # nothing synthesized again
    assert pretrain not in fake.trained and second.results[PRETRAIN_CELL] == first.results[PRETRAIN_CELL]
    assert trained_cells(second, fake) == ["adalora-rankmap-es", "full-es", "s2lora-es"]
    assert all(f"model.w2v_path={pretrain / 'checkpoint_last.pt'}" in overrides
               for _, overrides in fake.trained.values())

    fake.clear()  # pretrained otherwise: a folder of its own, beside the first
    third = run_method_grid(liu2023, write_grid(tmp_path, definition, "third", "lora", pretrain_updates=300),
                            tmp_path / "third", fake, shared_dir=shared)
    assert third.corpus_dir() == corpus and pretrain_cell(third).directory.parent == shared
    assert pretrain_cell(third).directory != pretrain and pretrain_cell(third).directory in fake.trained


def test_another_package_version_synthesizes_a_corpus_of_its_own(tmp_path, definition, monkeypatch):
    """Synthesis may change between releases, and it keeps the utterances a folder already holds:
    so a shared corpus is one release's."""
    import fairseq_subnets

    grid = liu2023.load_grid(write_grid(tmp_path, definition, "versions", "lora"))
    corpus = liu2023.GridRun(grid, tmp_path / "out", shared_dir=tmp_path / "shared").corpus_dir()
    monkeypatch.setattr(fairseq_subnets, "__version__", fairseq_subnets.__version__ + ".post1")
    upgraded = liu2023.GridRun(grid, tmp_path / "out", shared_dir=tmp_path / "shared").corpus_dir()
    assert upgraded.parent == corpus.parent and upgraded.name.startswith("tiny-") and upgraded != corpus


def test_a_grid_makes_the_corpus_and_pretrained_model_when_no_grid_did(tmp_path, definition):
    """The second grid of the test above, in a shared folder of its own: it synthesizes and pretrains."""
    fake = FakeRun()
    alone = run_method_grid(liu2023, write_grid(tmp_path, definition, "second", "s2lora"), tmp_path / "second",
                            fake, shared_dir=tmp_path / "elsewhere")
    assert (alone.corpus_dir() / "corpus.json").is_file() and alone.corpus_dir().parent == tmp_path / "elsewhere" / "corpora"
    assert pretrain_cell(alone).directory in fake.trained
    assert trained_cells(alone, fake) == ["adalora-rankmap-es", "full-es", PRETRAIN_CELL, "s2lora-es"]


def test_without_a_shared_folder_the_corpus_and_pretrained_model_are_the_grids_own(tmp_path, definition):
    grid = liu2023.load_grid(write_grid(tmp_path, definition, "own", "lora"))
    run = liu2023.GridRun(grid, tmp_path / "out")
    assert run.corpus_dir() == tmp_path / "out" / "corpus"
    assert pretrain_cell(run).directory == tmp_path / "out" / PRETRAIN_CELL and not pretrain_cell(run).shared


def test_a_shared_cell_another_run_holds_fails_at_once_and_is_made_on_the_next_run(tmp_path, definition):
    """As if another grid run were pretraining the same model: this run's pretraining (and the cells
    built on it) wait for the next run, which makes it once the other has let go."""
    shared, fake, said = tmp_path / "shared", FakeRun(), []
    grid = liu2023.load_grid(write_grid(tmp_path, definition, "busy", "lora"))
    other = FolderLock(pretrain_cell(liu2023.GridRun(grid, tmp_path / "out", shared_dir=shared)).directory)
    assert other.try_acquire()
    run = liu2023.GridRun(grid, tmp_path / "out", say=said.append, runner=fake, shared_dir=shared)
    with pytest.raises(CellBusy, match=f"cell pretrain: its folder {pretrain_cell(run).directory} is in use by "
                                       f"another grid run \\(lock {other.path}\\); run this grid again"):
        run.run()
    assert fake.trained == {} and not pretrain_cell(run).directory.exists()
    other.release()
    run.run()
    assert pretrain_cell(run).directory in fake.trained and set(run.results) == {cell.name for cell in run.cells}


def test_synthesis_waits_for_another_run_synthesizing_the_shared_corpus(tmp_path, definition):
    shared, said = tmp_path / "shared", []
    grid = liu2023.load_grid(write_grid(tmp_path, definition, "wait", "lora"))
    run = liu2023.GridRun(grid, tmp_path / "out", say=said.append, shared_dir=shared)
    other = FolderLock(run.corpus_dir())
    assert other.try_acquire()
    releaser = threading.Timer(0.5, other.release)
    releaser.start()
    run.synthesize()
    releaser.join()
    assert said == [f"[grid] corpus: waiting for another grid run synthesizing it ({other.path})"]
    assert (run.corpus_dir() / "corpus.json").is_file()
