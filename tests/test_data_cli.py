"""`fairseq-subnets data ...` argument handling and the import-cost promise of the data package."""
import pkgutil
import subprocess
import sys
from unittest import mock

import pytest

import fairseq_subnets.data
from fairseq_subnets.cli import main as cli_main


def run_cli(*argv):
    """The real `fairseq-subnets` entry point, with only the `data` command registered."""
    with mock.patch.object(cli_main, "COMMAND_MODULES", ("data",)):
        return cli_main.main(list(argv))


@pytest.mark.parametrize("command", [[], ["synth"], ["manifest"], ["check"]])
def test_every_data_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("data", *command, "--help")
    assert exit_info.value.code == 0
    assert "usage: fairseq-subnets data" in capsys.readouterr().out


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys):
    assert run_cli("data", "synth", "--corpus", "no-such-corpus", "--out", str(tmp_path)) == 2
    error = capsys.readouterr().err
    assert error.startswith("fairseq-subnets data: error: no corpus named 'no-such-corpus'")
    assert error.count("\n") == 1


def test_manifest_option_combinations_are_checked(tmp_path, capsys):
    assert run_cli("data", "manifest", "folder", str(tmp_path), "--out", str(tmp_path / "o")) == 2
    assert "needs --transcripts SPLIT=FILE" in capsys.readouterr().err
    assert run_cli("data", "manifest", "fleurs", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--transcripts", f"train={tmp_path}/t.txt") == 2
    assert "--transcripts is only for the folder format" in capsys.readouterr().err
    assert run_cli("data", "manifest", "fleurs", str(tmp_path / "missing"), "--out", str(tmp_path / "o")) == 2
    assert "source folder not found" in capsys.readouterr().err


def test_check_of_a_missing_folder_fails(tmp_path, capsys):
    assert run_cli("data", "check", str(tmp_path / "nothing")) == 1
    assert "manifest folder not found" in capsys.readouterr().out


def test_data_package_never_imports_fairseq_or_torch():
    modules = ["fairseq_subnets.data", "fairseq_subnets.cli.data"]
    modules += [f"fairseq_subnets.data.{info.name}" for info in pkgutil.iter_modules(fairseq_subnets.data.__path__)]
    script = "\n".join([*(f"import {module}" for module in modules),
                        "import sys",
                        "heavy = sorted(name for name in ('fairseq', 'torch') if name in sys.modules)",
                        "assert not heavy, heavy"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 10


def test_progress_bars_stay_out_of_logs(capsys):
    """A bar written to a file is one endless line of carriage returns: none when stderr is no terminal."""
    from fairseq_subnets.data.files import run_in_threads

    assert run_in_threads(lambda x: x * 2, range(50), jobs=2, progress=True, description="double") == list(range(0, 100, 2))
    assert capsys.readouterr().err == ""
