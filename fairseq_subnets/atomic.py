"""Atomic file output, shared by every part of the package (standard library only, so the data
tools and the pure-torch core can both use it).

A file is first written to a hidden `.NAME.*.partial` file in the same folder, flushed to disk, and
then renamed over NAME: a file that has its final name is always complete, whatever interrupts the
writer, and a failed write leaves the previous file untouched. The file gets the permissions a
plain `open(NAME, "w")` would give it (0666 less the umask), so colleagues sharing a folder on a
cluster can read it whenever the user's umask lets them.
"""
import errno
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
_NEW_FILE_MODE = 0o666
"""The mode open() asks for; the kernel takes the umask away, as it does for open()."""


def _create_partial_file(path: Path) -> str:
    """Creates an empty, uniquely named partial file next to `path` and returns its name.

    Not tempfile.mkstemp: it creates mode 0600, which the rename would carry over to the output
    whatever the umask. Asking for 0666 lets the kernel apply the umask (and a folder's default
    ACL) exactly as for open(), with no read-and-restore of the process-wide umask, which would
    race with other threads creating files. O_EXCL never shares a file with another writer, and
    64 random bits make a clash practically impossible.
    """
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE))
    return str(temporary)


@contextmanager
def atomic_path(path):
    """Yields a temporary path next to `path`; it becomes `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_partial_file(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_atomically(path, data: bytes, check_written=None) -> None:
    """Writes `data` to `path` atomically, fsynced before the rename; `check_written(temporary)`,
    when given, reads the written file back first and raises to keep it from being renamed."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if check_written is not None:
            check_written(temporary)


def check_folder_writable(folder) -> None:
    """Raises the OSError that creating a file in `folder` would meet when a file stands where
    `folder` or a folder above it should be, or the nearest existing folder is not writable, so a
    command fails before it spends minutes computing its output. Creates nothing; the write itself
    still reports what this cannot foresee (a full disk)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))


def check_writable(path) -> None:
    """check_folder_writable for the file `path`, which must not be a folder either."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    check_folder_writable(path.parent)


def cannot_write_message(path, error: OSError) -> str:
    """'PATH: cannot write (REASON)', naming the folder at fault when it is one above PATH."""
    culprit = error.filename is not None and Path(error.filename) in Path(path).parents
    return f"{path}: cannot write ({error.strerror}{f': {error.filename}' if culprit else ''})"
