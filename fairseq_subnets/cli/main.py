"""`fairseq-subnets`: one command with subcommands for everything that is not training or decoding.

Each module named in COMMAND_MODULES exposes `register(subparsers)`, which only declares its
subcommands and sets `func` (called with the parsed arguments; its return value is the exit status).
Everything heavy (torch, numpy, scipy, safetensors, soundfile, fairseq) is imported inside the
command functions, so `--help` and argument errors come back at once.
"""
import argparse
import importlib
import sys
from contextlib import contextmanager

from ..atomic import cannot_write_message

COMMAND_MODULES = ("data", "masks", "interop", "bundles", "adapters", "demo", "launch", "grid", "report", "benchmarks")
QUIET_HELP = "no progress bar (none either when stderr is not a terminal)"

RENAMED_COMMANDS = {
    "bundle": ("bundles",),
    "adapter": ("adapters",),
    "bench-train": ("bench", "train"),
    "bench-tuners": ("bench", "tuners"),
    "bench-data": ("bench", "data"),
    "bench-data-wait": ("bench", "data-wait"),
    "bench-rehearsal": ("bench", "rehearsal"),
}
"""Spellings of the previous release (first word -> today's words), accepted until the next one."""
RENAMED_OPTIONS = {("adapters", "ranks"): {"--csv": "--csv-out"}}
"""Options renamed under a subcommand, accepted until the next release (`--csv` now only prints CSV)."""
HELP_FLAGS = ("-h", "--help")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


@contextmanager
def writing(path: str):
    """Turns an OSError met while checking or writing `path` into a one-line UserError naming it."""
    try:
        yield
    except OSError as error:
        raise UserError(cannot_write_message(path, error)) from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fairseq-subnets",
        description="Subnetworks of wav2vec2 / XLS-R models for stock fairseq: data, masks, export, demo.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"fairseq_subnets.cli.{name}").register(subparsers)
    return parser


def _command_today(argv):
    """Today's words for the command that `argv` starts with (the same word when it was not renamed)."""
    first = argv[0]
    if first in RENAMED_COMMANDS:
        return list(RENAMED_COMMANDS[first])
    # `bench` was the pruning benchmark; its options all start with a dash, the new group's words do not.
    if first == "bench" and (len(argv) == 1 or (argv[1].startswith("-") and argv[1] not in HELP_FLAGS)):
        return ["bench", "prune"]
    return [first]


def current_spelling(argv):
    """`argv` in today's spelling, and the one-line notice naming today's spelling when it used an
    old one (None when it did not)."""
    argv = list(argv)
    if not argv:
        return argv, None
    typed, today, rest = argv[:1], _command_today(argv), argv[1:]
    renames = RENAMED_OPTIONS.get((*today, *rest[:1]), {})
    renamed_options = {}
    for index, token in enumerate(rest):
        option, equals, value = token.partition("=")
        if option in renames:
            rest[index] = renames[option] + equals + value
            renamed_options[option] = renames[option]
    if typed == today and not renamed_options:
        return argv, None
    subcommand = rest[:1] if renamed_options else []
    notice = (f"fairseq-subnets: `{' '.join([*typed, *subcommand, *renamed_options])}` is now "
              f"`{' '.join([*today, *subcommand, *renamed_options.values()])}`; "
              "the old spelling goes in the next release")
    return today + rest, notice


def main(argv=None):
    parser = build_parser()
    argv, notice = current_spelling(sys.argv[1:] if argv is None else argv)
    if notice:
        print(notice, file=sys.stderr)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as error:
        print(f"fairseq-subnets {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
