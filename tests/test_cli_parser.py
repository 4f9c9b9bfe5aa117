"""The `fairseq-subnets` parser: built without heavy imports, one noun per group, one meaning per flag,
and the previous release's spellings still accepted with a one-line notice."""
import argparse
import importlib.metadata
import json
import subprocess
import sys

import pytest

from fairseq_subnets.cli import main as cli_main

HEAVY = ("torch", "numpy", "scipy", "safetensors", "soundfile", "fairseq", "matplotlib", "transformers")
"""Packages that cost seconds to import: none of them may load before a command function runs."""

REPORT_HEAVY = f"""
import sys
heavy = sorted({{name.partition(".")[0] for name in sys.modules}} & set({HEAVY!r}))
"""

COMMANDS = {"data", "prune", "masks", "export", "import", "bundles", "adapters", "demo", "launch", "grid", "report",
            "bench"}
BENCHMARKS = {"prune", "train", "tuners", "deploy", "data", "data-wait", "rehearsal", "gpu", "cli"}


def python(script, *argv):
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)


def subcommands(parser):
    """Name -> parser of each subcommand `parser` declares."""
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def every_parser(parser):
    yield parser
    for child in subcommands(parser).values():
        yield from every_parser(child)


def parsed(argv):
    return vars(cli_main.build_parser().parse_args(argv))


def test_building_the_real_parser_imports_nothing_heavy():
    result = python("from fairseq_subnets.cli.main import build_parser\n"
                    "build_parser()\n" + REPORT_HEAVY + "print(heavy)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_of_every_command_and_group_imports_nothing_heavy():
    """`fairseq-subnets --help`, then each command's and each group's `--help` in turn, in one fresh
    interpreter; after each one the heavy packages loaded so far are recorded."""
    script = """
import argparse, contextlib, io, json, sys
from fairseq_subnets.cli.main import build_parser, main

def paths(parser, prefix):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from paths(child, prefix + [name])

records = []
for argv in paths(build_parser(), []):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv + ["--help"])
        except SystemExit as stop:
            status = stop.code
""" + "\n".join("    " + line for line in REPORT_HEAVY.strip().splitlines()) + """
    records.append({"argv": argv, "status": status, "usage": out.getvalue().startswith("usage: fairseq-subnets"),
                    "heavy": heavy})
print(json.dumps(records))
"""
    result = python(script)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    visited = {tuple(record["argv"]) for record in records}
    assert {(), *((name,) for name in COMMANDS), *(("bench", name) for name in BENCHMARKS)} <= visited
    assert ("masks", "stats") in visited and ("data", "synth") in visited  # subcommands of groups
    assert [record["argv"] for record in records if record["status"] != 0 or not record["usage"]] == []
    first_heavy = next((record for record in records if record["heavy"]), None)
    assert first_heavy is None, f"`{' '.join(first_heavy['argv'])} --help` imported {first_heavy['heavy']}"


def test_the_installed_command_imports_nothing_heavy():
    """`fairseq-subnets --help` exactly as a user starts it, its imports read from Python's import log."""
    from fairseq_subnets.benchmarks.cli_startup import console_script

    result = subprocess.run([sys.executable, "-X", "importtime", str(console_script()), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: fairseq-subnets"), result.stderr
    imported = {line.rpartition("|")[2].strip().partition(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "argparse" in imported  # the log was read
    assert sorted(imported & set(HEAVY)) == []


def test_the_console_script_is_the_cli_entry():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [script.value for script in scripts if script.name == "fairseq-subnets"] == ["fairseq_subnets.cli.main:main"]


def test_one_noun_per_group_and_every_benchmark_in_bench():
    commands = subcommands(cli_main.build_parser())
    assert set(commands) == COMMANDS
    assert set(subcommands(commands["bench"])) == BENCHMARKS
    assert not set(commands) & set(cli_main.RENAMED_COMMANDS)


def test_restated_choices_equal_the_core_ones():
    from fairseq_subnets.cli import masks
    from fairseq_subnets.core import pruning, stats

    assert masks.PRUNING_METHODS == pruning.METHODS
    assert masks.GROUPINGS == stats.GROUPINGS
    assert masks.METRICS == stats.METRICS


def test_csv_prints_and_csv_out_writes():
    """`--csv` is a switch (print the table as CSV) wherever it exists; writing a CSV file is `--csv-out FILE`."""
    options = [action for parser in every_parser(cli_main.build_parser()) for action in parser._actions]
    assert {action.nargs for action in options if "--csv" in action.option_strings} == {0}
    assert {action.nargs for action in options if "--csv-out" in action.option_strings} == {None}
    assert parsed(["masks", "stats", "m.mask", "--csv"])["csv"] is True
    assert parsed(["adapters", "ranks", "a.st", "--csv-out", "ranks.csv"])["csv_out"] == "ranks.csv"


OLD_AND_NEW = [
    (["bundle", "list", "b.pt"], ["bundles", "list", "b.pt"], "`bundle` is now `bundles`"),
    (["adapter", "info", "a.st"], ["adapters", "info", "a.st"], "`adapter` is now `adapters`"),
    (["bench", "--quick"], ["bench", "prune", "--quick"], "`bench` is now `bench prune`"),
    (["bench-train", "--quick"], ["bench", "train", "--quick"], "`bench-train` is now `bench train`"),
    (["bench-tuners", "--quick"], ["bench", "tuners", "--quick"], "`bench-tuners` is now `bench tuners`"),
    (["bench-data", "--files", "3"], ["bench", "data", "--files", "3"], "`bench-data` is now `bench data`"),
    (["bench-data-wait", "D", "--languages", "es"], ["bench", "data-wait", "D", "--languages", "es"],
     "`bench-data-wait` is now `bench data-wait`"),
    (["bench-rehearsal", "--out", "R"], ["bench", "rehearsal", "--out", "R"],
     "`bench-rehearsal` is now `bench rehearsal`"),
    (["adapters", "ranks", "a.st", "--csv", "r.csv"], ["adapters", "ranks", "a.st", "--csv-out", "r.csv"],
     "`adapters ranks --csv` is now `adapters ranks --csv-out`"),
    (["adapter", "ranks", "a.st", "--csv=r.csv"], ["adapters", "ranks", "a.st", "--csv-out=r.csv"],
     "`adapter ranks --csv` is now `adapters ranks --csv-out`"),
]


@pytest.mark.parametrize("old, new, notice", OLD_AND_NEW, ids=[" ".join(old) for old, _, _ in OLD_AND_NEW])
def test_an_old_spelling_parses_as_the_new_one_with_one_notice(old, new, notice):
    spelled, message = cli_main.current_spelling(old)
    assert spelled == new
    assert message == f"fairseq-subnets: {notice}; the old spelling goes in the next release"
    assert callable(parsed(new)["func"])


@pytest.mark.parametrize("argv", [["bench", "--help"], ["bench", "prune", "--quick"], ["bundles", "list", "b.pt"],
                                  ["masks", "stats", "m.mask", "--csv"], ["adapters", "ranks", "a.st", "--plot", "p.png"],
                                  []], ids=lambda argv: " ".join(argv) or "nothing")
def test_the_new_spelling_passes_unchanged_without_a_notice(argv):
    assert cli_main.current_spelling(argv) == (argv, None)


@pytest.mark.parametrize("old, new", [(["bench-data"], ["bench", "data"]), (["bench"], ["bench", "prune"])])
def test_an_old_benchmark_spelling_runs_the_new_command_after_one_notice(old, new, capsys):
    bad_settings = {"bench-data": ["--files", "0"], "bench": ["--quick", "--sparsity", "2"]}[old[0]]
    assert cli_main.main(new + bad_settings) == 2
    new_error = capsys.readouterr().err
    assert new_error.startswith("fairseq-subnets bench: error: ") and new_error.count("\n") == 1
    assert cli_main.main(old + bad_settings) == 2
    notice, error = capsys.readouterr().err.splitlines()
    assert notice == (f"fairseq-subnets: `{old[0]}` is now `{' '.join(new)}`; "
                      "the old spelling goes in the next release")
    assert error + "\n" == new_error


def test_the_old_csv_flag_of_adapter_ranks_reaches_the_new_one(tmp_path, capsys):
    """Through `main`: the renamed group and flag both arrive (the --plot check fails before any file is read)."""
    argv = ["ranks", str(tmp_path / "a.st"), "--csv", str(tmp_path / "r.csv"), "--plot", "p.txt"]
    assert cli_main.main(["adapter", *argv]) == 2
    notice, error = capsys.readouterr().err.splitlines()
    assert notice.startswith("fairseq-subnets: `adapter ranks --csv` is now `adapters ranks --csv-out`;")
    assert error == ("fairseq-subnets adapters: error: --plot p.txt: the heatmap is written as PNG; "
                     "name a .png file")
    assert not (tmp_path / "r.csv").exists()
