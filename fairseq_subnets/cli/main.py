"""`fairseq-subnets`: one command with subcommands for everything that is not training or decoding.

Each module named in COMMAND_MODULES exposes `register(subparsers)`, which adds its subcommands and
sets `func` (called with the parsed arguments; its return value is the exit status).
"""
import argparse
import importlib
import sys
from contextlib import contextmanager

from ..atomic import cannot_write_message

COMMAND_MODULES = ("data", "masks", "bundles", "adapters", "demo", "launch", "grid", "report", "benchmarks")
QUIET_HELP = "no progress bar (none either when stderr is not a terminal)"


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


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as error:
        print(f"fairseq-subnets {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
