"""The experiment engine on generic cells (no fairseq): cache keys from configuration, input file
content and dependencies; finished cells skipped; unfinished ones resumed in place; failures
stopping only their dependents; bad cell graphs refused before any work; cells running in parallel."""
import json
import threading

import pytest

from fairseq_subnets.engine.cells import Cell, CellError
from fairseq_subnets.engine.executors import LocalExecutor
from fairseq_subnets.engine.results import write_results
from fairseq_subnets.engine.scheduler import FAILURE_FILE, CellFailed, run_cells


class Recorder:
    """Work functions that log which cell ran and return the results of what they read."""

    def __init__(self):
        self.ran = []

    def work(self, name, inputs=()):
        def run(context):
            self.ran.append(name)
            (context.directory / "output.txt").write_text(name)
            return {"cell": name, "read": [path.read_text() for path in inputs],
                    "after": sorted(context.results)}
        return run


def chain(tmp_path, recorder, b_config=None, data_text="data"):
    """a -> b -> c (c also reads a file), and d on its own."""
    data = tmp_path / "data.txt"
    if not data.exists() or data.read_text() != data_text:
        data.write_text(data_text)
    return [
        Cell("a", tmp_path / "a", recorder.work("a"), {"lr": 1}),
        Cell("b", tmp_path / "b", recorder.work("b"), b_config or {"lr": 1}, after=["a"]),
        Cell("c", tmp_path / "c", recorder.work("c", [data]), {}, inputs=[data], after=["b"]),
        Cell("d", tmp_path / "d", recorder.work("d"), {"seed": 3}),
    ]


def run(cells, jobs=1):
    return run_cells(cells, LocalExecutor(jobs), say=lambda message: None)


def test_finished_cells_are_skipped_and_a_changed_config_reruns_the_cell_and_its_dependents(tmp_path):
    recorder = Recorder()
    first = run(chain(tmp_path, recorder))
    assert sorted(recorder.ran) == ["a", "b", "c", "d"]
    assert first["c"] == {"cell": "c", "read": ["data"], "after": ["b"]}
    recorder.ran.clear()
    assert run(chain(tmp_path, recorder)) == first and recorder.ran == []
    (tmp_path / "b" / "leftover.txt").write_text("from the old configuration")
    run(chain(tmp_path, recorder, b_config={"lr": 2}))
    assert sorted(recorder.ran) == ["b", "c"]
    assert not (tmp_path / "b" / "leftover.txt").exists()  # a changed cell starts from an empty folder
    assert json.loads((tmp_path / "b" / "cell.json").read_text())["config"] == {"lr": 2}


def test_input_files_count_by_content(tmp_path):
    recorder = Recorder()
    run(chain(tmp_path, recorder))
    recorder.ran.clear()
    (tmp_path / "data.txt").write_text("data")  # rewritten, same bytes, new mtime
    run(chain(tmp_path, recorder))
    assert recorder.ran == []
    results = run(chain(tmp_path, recorder, data_text="other data"))
    assert recorder.ran == ["c"] and results["c"]["read"] == ["other data"]


def test_a_failed_cell_stops_only_its_dependents_and_resumes_in_its_folder(tmp_path):
    recorder = Recorder()
    attempts = []

    def flaky(context):
        attempts.append((context.directory / "checkpoint").exists())
        (context.directory / "checkpoint").write_text("half way")
        if len(attempts) == 1:
            raise RuntimeError("killed half way")
        return {"resumed": attempts[-1]}

    cells = chain(tmp_path, recorder)
    cells[1] = Cell("b", tmp_path / "b", flaky, {"lr": 1}, after=["a"])
    with pytest.raises(CellFailed, match="cell b failed: killed half way") as failure:
        run(cells)
    assert "RuntimeError: killed half way" in (tmp_path / "b" / FAILURE_FILE).read_text()
    assert str(tmp_path / "b" / FAILURE_FILE) in str(failure.value)
    assert sorted(recorder.ran) == ["a", "d"] and not (tmp_path / "b" / "result.json").exists()
    recorder.ran.clear()
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
], ids=["duplicate name", "unknown dependency", "cycle", "nested folder", "missing input"])
def test_inconsistent_cells_are_refused_naming_the_cell(tmp_path, change, message):
    recorder = Recorder()
    cells = chain(tmp_path, recorder)
    change(cells, tmp_path)
    with pytest.raises(CellError, match=message):
        run(cells)
    if "input" not in message:  # graph errors come before any work; a missing input when its cell is due
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
