"""One grid run at a time in a folder that several may use: the shared corpus and pretrain cell.

Grids share what they have in common through a shared folder (engine/grid_plan.py), so two grid
runs started together may reach for the same corpus or the same pretraining. A lock file beside
the folder (`FOLDER.lock`, an advisory lock that the system drops when its process ends, however it
ends) is held while one run builds it: corpus synthesis waits for it, and a cell that finds it
taken fails at once, naming the folder, so the run is repeated once the other has finished (and
then finds the folder's work done).
"""
import fcntl
import os
from pathlib import Path

LOCK_SUFFIX = ".lock"


class FolderLock:
    """The lock of `folder`: `acquire()` (waiting) or `try_acquire()`, then `release()`."""

    def __init__(self, folder: Path):
        self.path = Path(folder).with_name(Path(folder).name + LOCK_SUFFIX)
        self._descriptor = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)

    def try_acquire(self) -> bool:
        """Takes the lock if no other holder has it; False otherwise."""
        descriptor = self._open()
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._descriptor = descriptor
        return True

    def acquire(self) -> None:
        """Takes the lock, waiting for its holder to release it."""
        descriptor = self._open()
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing drops the lock
            self._descriptor = None
