"""Atomic file output, shared by every part of the package (standard library only, so the data
tools and the pure-torch core can both use it).

A file is first written to a hidden `.NAME.*.partial` file in the same folder, flushed to disk, and
then renamed over NAME: a file that has its final name is always complete, whatever interrupts the
writer, and a failed write leaves the previous file untouched.
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; it becomes `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_atomically(path, data: bytes) -> None:
    """Writes `data` to `path` atomically, fsynced before the rename."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
