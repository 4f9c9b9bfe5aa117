"""docs/bad-inputs.md and the tests agree: every catalogue row is a test, every test a row.

A test module `tests/test_bad_inputs_*.py` declares the ids it covers in `CATALOGUE_IDS` (its
parametrized test uses them as pytest ids); this module reads the doc's tables and compares.
"""
import importlib
import re
from pathlib import Path
from typing import List, NamedTuple

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
COLUMNS = ("id", "family", "bad input", "message (stable prefix)", "exit", "left on disk")
MINIMUM_ROWS = 40
_CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


class Row(NamedTuple):
    id: str
    family: str
    bad_input: str
    message: str
    exit_status: str
    left_on_disk: str


def _cells(line: str) -> List[str]:
    """The cells of a Markdown table line, unescaped, with the backticks around code removed."""
    cells = _CELL_SEPARATOR.split(line.strip())[1:-1]
    return [cell.strip().replace("\\|", "|").strip("`") for cell in cells]


def catalogue_rows() -> List[Row]:
    """The rows of every catalogue table in the doc (tables with exactly COLUMNS as header)."""
    rows, in_table = [], False
    for line in CATALOGUE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            in_table = False
        elif tuple(_cells(line)) == COLUMNS:
            in_table = True
        elif in_table and not set(line) <= set("|-: "):
            rows.append(Row(*_cells(line)))
    return rows


def covered_ids():
    """Catalogue id -> the test modules whose CATALOGUE_IDS name it."""
    covered = {}
    for path in sorted(Path(__file__).parent.glob("test_bad_inputs_*.py")):
        for case_id in importlib.import_module(path.stem).CATALOGUE_IDS:
            covered.setdefault(case_id, []).append(path.stem)
    return covered


def test_every_documented_input_is_tested_and_every_tested_one_documented():
    documented = [row.id for row in catalogue_rows()]
    covered = covered_ids()
    assert sorted(set(documented) - set(covered)) == [], "rows without a test"
    assert sorted(set(covered) - set(documented)) == [], "tests without a row"
    assert sorted({i for i in documented if documented.count(i) > 1}) == [], "ids used twice in the doc"
    assert {i: modules for i, modules in covered.items() if len(modules) > 1} == {}, "ids tested twice"


def test_the_catalogue_has_at_least_40_rows():
    count = len(catalogue_rows())
    assert count >= MINIMUM_ROWS, f"the catalogue has {count} rows, fewer than {MINIMUM_ROWS}"
