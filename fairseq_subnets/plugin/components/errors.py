"""Bad training and decoding inputs end stock fairseq commands with one line, ours, last.

Our task and model run inside `fairseq-hydra-train` and `fairseq-generate`, which report any
exception as a traceback: Hydra prints some 30 lines of it and then its own last line ("Set the
environment variable HYDRA_FULL_ERROR=1 ..."), so the message naming the bad key or file is buried.
Hydra and fairseq-generate pass `SystemExit` through untouched (Hydra catches only `Exception`), so
the entry points fairseq calls on our task (`one_line_errors`) turn an input error into our line
on stderr and exit status 2, as `fairseq-subnets` commands do. Only in those commands: called
in-process (export, tests, notebooks) the same code raises the exception for the caller to handle.

fairseq's own multi-GPU spawn is the exception: the failing child prints our line and exits, and
torch.multiprocessing then has the parent report the child's exit status with a traceback of its
own (by torch's spawn code; not run here, for want of GPUs). Ranks started as separate processes,
as `fairseq-subnets launch` does, each end with our line.
"""
import functools
import inspect
import os
import sys

from ...core.compact import CompactStateError
from ...core.maskfile import MaskFileError
from ...core.transforms import TransformError
from ...data.language_sampling import LanguageSamplingError
from ...errors import PluginInputError
from ..formats.checkpoints import CheckpointLoadError

EXIT_STATUS = 2
"""What `fairseq-subnets` commands exit with on bad input."""


INPUT_ERRORS = (PluginInputError, MaskFileError, TransformError, LanguageSamplingError, CheckpointLoadError,
                CompactStateError)
"""What bad input raises below our entry points: our plugin's errors and those of the core modules
they call. Anything else is a fault, and keeps its traceback."""


def fairseq_command():
    """The stock fairseq command this process runs (`fairseq-hydra-train`, `fairseq-generate`, ...,
    also as `python -m fairseq_cli.NAME`), or None when fairseq runs inside another program."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program.startswith("fairseq-") and program != "fairseq-subnets":
        return program
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = getattr(main_spec, "name", "") or ""
    return module if module.startswith("fairseq_cli.") else None


def one_line_errors(method):
    """Wraps a method fairseq calls on our task: in a fairseq command, an input error it raises
    ends the command with `COMMAND: error: MESSAGE` as the last line of stderr. A message of several
    lines (a headline, then one problem per line) has its headline printed last, after the rest."""

    @functools.wraps(method)
    def reporting(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except INPUT_ERRORS as error:
            command = fairseq_command()
            if command is None:
                raise
            headline, *details = str(error).splitlines() or [""]
            if details:
                headline = f"{headline.rstrip(':')}, listed above"
            print(*details, f"{command}: error: {headline}", sep="\n", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_STATUS) from None

    reporting.__signature__ = inspect.signature(method)  # fairseq reads argument names with getfullargspec
    return reporting
