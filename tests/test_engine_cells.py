"""The experiment engine on generic cells (no fairseq): cache keys from the work's bound arguments,
config files, input file content, dependencies and the package version; finished cells skipped, and
found without running anything; unfinished ones resumed in place; failures stopping only their
dependents; bad cell graphs refused before any work; cells running in parallel."""
import json
import threading
from functools import partial
from pathlib import Path

import pytest

import fairseq_subnets
from fairseq_subnets.engine.cells import Cell, CellError
from fairseq_subnets.engine.executors import LocalExecutor
from fairseq_subnets.engine.hydra_configs import HydraConfig
from fairseq_subnets.engine.results import write_results
from fairseq_subnets.engine.scheduler import FAILURE_FILE, CellFailed, cached_results, run_cells


def record(log: str, name: str, inputs, settings: dict, context, config=None) -> dict:
    """A cell's work: logs its name, and returns what it read and the results it was given
    (`config`: a HydraConfig it would train with)."""
    with open(log, "a") as handle:
        handle.write(f"{name}\n")
    (context.directory / "output.txt").write_text(name)
    return {"cell": name, "read": [Path(path).read_text() for path in inputs], "after": sorted(context.results)}


class Recorder:
    """Work functions (partials of `record`, as a method binds them) and which cells ran."""

    def __init__(self, folder: Path):
        self.log = folder / "ran.log"

    def work(self, name, inputs=(), settings=None, **bound):
        return partial(record, str(self.log), name, [str(path) for path in inputs], settings or {}, **bound)

    @property
    def ran(self):
        return self.log.read_text().split() if self.log.exists() else []

    def clear(self):
        self.log.unlink(missing_ok=True)


def chain(tmp_path, recorder, b_settings=None, data_text="data"):
    """a -> b -> c (c also reads a file), and d on its own."""
    data = tmp_path / "data.txt"
    if not data.exists() or data.read_text() != data_text:
        data.write_text(data_text)
    return [
        Cell("a", tmp_path / "a", recorder.work("a", settings={"lr": 1})),
        Cell("b", tmp_path / "b", recorder.work("b", settings=b_settings or {"lr": 1}), after=["a"]),
        Cell("c", tmp_path / "c", recorder.work("c", [data]), inputs=[data], after=["b"]),
        Cell("d", tmp_path / "d", recorder.work("d", settings={"seed": 3})),
    ]


def run(cells, jobs=1):
    return run_cells(cells, LocalExecutor(jobs), say=lambda message: None)


def test_finished_cells_are_skipped_and_a_changed_argument_reruns_the_cell_and_its_dependents(tmp_path):
    recorder = Recorder(tmp_path)
    first = run(chain(tmp_path, recorder))
    assert sorted(recorder.ran) == ["a", "b", "c", "d"]
    assert first["c"] == {"cell": "c", "read": ["data"], "after": ["b"]}
    recorder.clear()
    assert run(chain(tmp_path, recorder)) == first and recorder.ran == []
    (tmp_path / "b" / "leftover.txt").write_text("from the old configuration")
    run(chain(tmp_path, recorder, b_settings={"lr": 2}))
    assert sorted(recorder.ran) == ["b", "c"]
    assert not (tmp_path / "b" / "leftover.txt").exists()  # a changed cell starts from an empty folder
    work = json.loads((tmp_path / "b" / "cell.json").read_text())["work"]
    assert work["function"] == f"{__name__}.record" and work["args"][-1] == {"lr": 2}


def test_input_files_count_by_content(tmp_path):
    recorder = Recorder(tmp_path)
    run(chain(tmp_path, recorder))
    recorder.clear()
    (tmp_path / "data.txt").write_text("data")  # rewritten, same bytes, new mtime
    run(chain(tmp_path, recorder))
    assert recorder.ran == []
    results = run(chain(tmp_path, recorder, data_text="other data"))
    assert recorder.ran == ["c"] and results["c"]["read"] == ["other data"]


def test_a_failed_cell_stops_only_its_dependents_and_resumes_in_its_folder(tmp_path):
    recorder = Recorder(tmp_path)
    attempts = []

    def flaky(context):
        attempts.append((context.directory / "checkpoint").exists())
        (context.directory / "checkpoint").write_text("half way")
        if len(attempts) == 1:
            raise RuntimeError("killed half way")
        return {"resumed": attempts[-1]}

    cells = chain(tmp_path, recorder)
    cells[1] = Cell("b", tmp_path / "b", flaky, after=["a"])
    with pytest.raises(CellFailed, match="cell b failed: killed half way") as failure:
        run(cells)
    assert "RuntimeError: killed half way" in (tmp_path / "b" / FAILURE_FILE).read_text()
    assert str(tmp_path / "b" / FAILURE_FILE) in str(failure.value)
    assert sorted(recorder.ran) == ["a", "d"] and not (tmp_path / "b" / "result.json").exists()
    recorder.clear()
    results = run(cells)
    assert recorder.ran == ["c"] and results["b"] == {"resumed": True}
    assert not (tmp_path / "b" / FAILURE_FILE).exists()


@pytest.mark.parametrize("change, message", [
    (lambda cells, root: cells.append(Cell("a", root / "a2", cells[0].work)), "cell a: the name is used twice"),
    (lambda cells, root: cells.append(Cell("e", root / "e", cells[0].work, after=["x"])),
     "cell e: depends on unknown cell x"),
    (lambda cells, root: setattr(cells[0], "after", ["c"]), "dependency cycle a -> c -> b -> a"),
    (lambda cells, root: cells.append(Cell("e", root / "a" / "e", cells[0].work)), "cell e: its folder"),
    (lambda cells, root: cells.append(Cell("e", root / "e", cells[0].work, inputs=[root / "nowhere"])),
     "cell e: input file .*nowhere does not exist"),
    (lambda cells, root: cells.append(Cell("e", root / "e", Recorder(root).work("e", settings={"log": Recorder}))),
     "cell e: a type bound to the work cannot be digested"),
    (lambda cells, root: cells.append(Cell("e", root / "e", Recorder(root).work(
        "e", config=HydraConfig("absent", root)))), "cell e: .*absent.yaml: cannot read this config"),
], ids=["duplicate name", "unknown dependency", "cycle", "nested folder", "missing input", "undigestable argument",
        "missing config"])
def test_inconsistent_cells_are_refused_naming_the_cell(tmp_path, change, message):
    recorder = Recorder(tmp_path)
    cells = chain(tmp_path, recorder)
    change(cells, tmp_path)
    with pytest.raises(CellError, match=message):
        run(cells)
    if "cell e" not in message:  # graph errors come before any work; a cell's own key when the cell is due
        assert recorder.ran == []


def test_jobs_run_cells_at_the_same_time(tmp_path):
    both_running = threading.Barrier(2, timeout=60)  # breaks (and fails the test) unless both wait at once

    def meet(context):
        both_running.wait()
        return {}

    cells = [Cell(name, tmp_path / name, meet) for name in ("x", "y")]
    assert run(cells, jobs=2) == {"x": {}, "y": {}}


def test_results_files_list_every_reported_cell_with_placeholders(tmp_path):
    columns = ("cell", "language", "cer")
    cells = [Cell("done", tmp_path / "done", None, row={"cell": "done", "language": "es"}),
             Cell("hidden", tmp_path / "hidden", None),
             Cell("todo", tmp_path / "todo", None, row={"cell": "todo", "language": "ca"})]
    results = {"done": {"cell": "done", "language": "es", "cer": 12.5}, "hidden": {"x": 1}}
    csv_path = write_results(tmp_path, cells, results, columns, {"method": "test"})
    assert csv_path.read_text() == "cell,language,cer\ndone,es,12.5\ntodo,ca,\n"
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["method"] == "test" and [row["cell"] for row in stored["cells"]] == ["done", "todo"]
    assert not list(tmp_path.glob(".*partial"))


def test_a_cells_config_files_and_the_package_version_are_in_its_key(tmp_path, monkeypatch):
    """A config (and, through its defaults list, the files it pulls in) counts by content; an
    upgraded package reruns every cell."""
    configs = tmp_path / "configs"
    (configs / "group").mkdir(parents=True)
    (configs / "base.yaml").write_text("optimization:\n  lr: [0.1]\n")
    (configs / "group" / "option.yaml").write_text("model:\n  width: 8\n")
    (configs / "run.yaml").write_text("defaults:\n  - _self_\n  - base\n  - group@_here_: option\n")
    (configs / "other.yaml").write_text("defaults:\n  - _self_\n  - base\n")
    recorder = Recorder(tmp_path)

    def cells():
        return [Cell("run", tmp_path / "run", recorder.work("run", config=HydraConfig("run", configs))),
                Cell("other", tmp_path / "other", recorder.work("other", config=HydraConfig("other", configs))),
                Cell("plain", tmp_path / "plain", recorder.work("plain"))]

    run(cells())
    assert sorted(recorder.ran) == ["other", "plain", "run"]
    assert sorted(json.loads((tmp_path / "run" / "cell.json").read_text())["configs"]) == [
        str(configs / name) for name in ("base.yaml", "group/option.yaml", "run.yaml")]
    recorder.clear()
    (configs / "group" / "option.yaml").write_text("model:\n  width: 16\n")
    run(cells())
    assert recorder.ran == ["run"]
    recorder.clear()
    (configs / "base.yaml").write_text("optimization:\n  lr: [0.2]\n")
    run(cells())
    assert sorted(recorder.ran) == ["other", "run"]
    recorder.clear()
    monkeypatch.setattr(fairseq_subnets, "__version__", fairseq_subnets.__version__ + ".post1")
    run(cells())
    assert sorted(recorder.ran) == ["other", "plain", "run"]


def test_a_group_option_is_found_along_the_primary_configs_search_path(tmp_path):
    """As Hydra looks it up: the config's own folder, then each `hydra.searchpath` folder in turn
    (where a technique ships its groups); an edit there reruns the cell; an option in none of them is
    refused naming the config and the folders."""
    configs, technique = tmp_path / "configs", tmp_path / "technique"
    (technique / "group").mkdir(parents=True)
    configs.mkdir()
    (technique / "group" / "option.yaml").write_text("model:\n  width: 8\n")
    (configs / "run.yaml").write_text(f"defaults:\n  - _self_\n  - group@_here_: option\n"
                                      f"hydra:\n  searchpath:\n    - file://{technique}\n")
    recorder = Recorder(tmp_path)

    def cells():
        return [Cell("run", tmp_path / "run", recorder.work("run", config=HydraConfig("run", configs)))]

    assert HydraConfig("run", configs).files() == [configs / "run.yaml", technique / "group" / "option.yaml"]
    run(cells())
    recorder.clear()
    run(cells())
    assert recorder.ran == []
    (technique / "group" / "option.yaml").write_text("model:\n  width: 16\n")
    run(cells())
    assert recorder.ran == ["run"]
    (configs / "group").mkdir()
    (configs / "group" / "option.yaml").write_text("model:\n  width: 4\n")  # the config's own folder comes first
    assert HydraConfig("run", configs).files() == [configs / "run.yaml", configs / "group" / "option.yaml"]
    (configs / "run.yaml").write_text((configs / "run.yaml").read_text().replace(": option", ": absent"))
    with pytest.raises(CellError, match=f"cell run: .*run.yaml: defaults: group/absent is in none of {configs}, "
                                        f"{technique}"):
        run(cells())


def test_finished_results_are_found_without_running_anything(tmp_path):
    """What a grid records before it runs: every cell finished with its current key, and no cell
    whose key changed (nor one built on it)."""
    recorder = Recorder(tmp_path)
    results = run(chain(tmp_path, recorder))
    recorder.clear()
    assert cached_results(chain(tmp_path, recorder)) == results
    assert cached_results(chain(tmp_path, recorder, b_settings={"lr": 2})) == {
        name: results[name] for name in ("a", "d")}
    cells = chain(tmp_path, recorder)
    (tmp_path / "data.txt").unlink()  # an input not there (yet): its cell is not finished
    assert sorted(cached_results(cells)) == ["a", "b", "d"]
    assert recorder.ran == []
