"""Atomic file output and a thread pool with a progress bar.

Every file this package writes first goes to a hidden `.NAME.*.partial` file in the same folder
and is then renamed over NAME, so a file that has its final name is always complete, whatever
interrupts the run. Leftover `.partial` files (after a SIGKILL) are removed by the next run.
"""
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

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
        os.unlink(temporary)
        raise


def write_text_atomic(path, text):
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")


def remove_partial_files(folder):
    """Deletes the `.partial` files an interrupted run left anywhere under `folder`."""
    for leftover in Path(folder).rglob(f".*{PARTIAL_SUFFIX}"):
        leftover.unlink()


def run_in_threads(function, items, jobs, progress, description):
    """`[function(item) for item in items]` on `jobs` threads, with a tqdm bar over the items.

    Threads suffice because the work is in subprocesses and numpy/libsndfile calls that release
    the GIL. On any exception (Ctrl-C included) the items not yet started are cancelled and the
    running ones finish before the exception propagates, so no worker writes after we return.
    """
    items = list(items)
    results = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(function, item): index for index, item in enumerate(items)}
        try:
            with tqdm(total=len(items), desc=description, unit="utt", disable=not progress) as bar:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
