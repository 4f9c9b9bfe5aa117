"""Atomic text output, clean-up after interrupted runs, and a thread pool with a progress bar.

Every file the data tools write goes through `fairseq_subnets.atomic`; leftover `.partial` files
(after a SIGKILL) are removed by the next run.
"""
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ..atomic import PARTIAL_SUFFIX, atomic_path, cannot_write_message, check_folder_writable
from .errors import DataError


def write_text_atomic(path, text):
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")


def make_output_folder(folder):
    """Creates `folder` (and its parents) if needed; what stands in the way is a DataError naming it."""
    try:
        check_folder_writable(folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(cannot_write_message(folder, error)) from None


def remove_partial_files(folder):
    """Deletes the `.partial` files an interrupted run left anywhere under `folder`."""
    for leftover in Path(folder).rglob(f".*{PARTIAL_SUFFIX}"):
        leftover.unlink()


def run_in_threads(function, items, jobs, progress, description):
    """`[function(item) for item in items]` on `jobs` threads, with a tqdm bar over the items
    when `progress` is set and stderr is a terminal (in a log file a bar is one endless line).

    Threads suffice because the work is in subprocesses and numpy/libsndfile calls that release
    the GIL. On any exception (Ctrl-C included) the items not yet started are cancelled and the
    running ones finish before the exception propagates, so no worker writes after we return.
    """
    items = list(items)
    results = [None] * len(items)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(function, item): index for index, item in enumerate(items)}
        try:
            with tqdm(total=len(items), desc=description, unit="utt", disable=None if progress else True) as bar:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
