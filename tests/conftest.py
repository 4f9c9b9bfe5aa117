"""Shared fixtures.

Every fairseq command a test starts, through `fairseq_subnets.runner` (grids, the demo, `launch`)
or directly, is forked from one process that imported fairseq once (tests/forked_commands.py; one
such process per pytest-xdist worker), and
only a test marked `slow` may start one: `slow` means "starts fairseq", so `-m "not slow"` runs
none.

One real tiny pipeline run (synthesized speech -> stock fairseq-hydra-train pretraining -> CTC
fine-tuning through the plugin -> stock fairseq-generate) is reused by every test that needs real
checkpoints, so the suite pays for it once, and a later suite not at all while nothing it follows
from has changed (skeleton_run)."""
import pytest

from fairseq_subnets.demo import SkeletonSettings, run_skeleton
from forked_commands import THREADS_VARIABLE, ForkingLauncher


def pytest_configure(config):
    share_the_cores_between_workers()


def share_the_cores_between_workers():
    """Under pytest-xdist, each worker, and every command it starts without a thread count of its
    own, gets its share of the cores (OMP_NUM_THREADS, and torch's thread count in the worker),
    unless the environment already sets one. With torch's default of one thread per core in every
    worker, the threads of one product wait on each other for a core the other worker holds: the
    rehearsal's training steps took markedly more CPU time that way. A test that needs a thread
    count (2-thread reproducibility, the runner's thread settings) still sets its own."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or THREADS_VARIABLE in os.environ:
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ[THREADS_VARIABLE] = str(threads)
    torch.set_num_threads(threads)


running_test = None
"""The test pytest is setting up, running or tearing down (its fixtures' work counts as its own)."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global running_test
    running_test = item
    try:
        yield
    finally:
        running_test = None


def uses_skeleton_run(item):
    return "skeleton_run" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items):
    """A test that uses skeleton_run (fairseq's training) is slow, even when a later session
    finds the run in the cache. Then the files are put in the order the test workers take them
    (`make test` keeps it: `--no-loadscope-reorder`; each file stays whole, its tests in order)."""
    unmarked = [item.nodeid for item in items
                if uses_skeleton_run(item) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(f"tests using skeleton_run must be marked slow: {', '.join(unmarked)}")
    items[:] = in_worker_order(items)


def in_worker_order(items):
    """`items` with their files in the order that keeps both test workers busy to the end: first
    one file that uses skeleton_run, whose worker builds the run (minutes) while the other worker
    takes the other files that start fairseq; then the rest of skeleton_run's users, which find
    the run built; and last the files that start no fairseq, which are short, so the workers
    finish close together. Otherwise a worker reaching skeleton_run while the other builds it
    waits for minutes, and pytest-xdist's default order (files with the most tests first) leaves
    the long files with few tests for the end, on one worker."""
    files = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    users = [name for name, tests in files.items() if any(uses_skeleton_run(item) for item in tests)]

    def group(name):
        if name in users:
            return 0 if name == users[0] else 2
        return 1 if any(item.get_closest_marker("slow") for item in files[name]) else 3

    return [item for name in sorted(files, key=group) for item in files[name]]


def refusal_unless_slow(program):
    """Why `program` may not start now: the running test is not marked slow."""
    if running_test is not None and running_test.get_closest_marker("slow") is None:
        return f"{running_test.nodeid} starts {program} but is not marked slow (slow means: starts fairseq)"
    return None


@pytest.fixture(scope="session", autouse=True)
def fairseq_launcher():
    """The runner's launcher for the whole session: commands forked from one fork server."""
    from fairseq_subnets import runner

    launcher = ForkingLauncher(refusal=refusal_unless_slow)
    replaced = runner.use_launcher(launcher)
    yield launcher
    runner.use_launcher(replaced)
    launcher.close()


SKELETON_SCHEDULE = dict(pretrain_updates=150, finetune_updates=250, finetune_lr=0.001,
                         finetune_phase_ratio=(0.1, 0.6, 0.3))
"""A short schedule (300 fine-tuning updates reached 34% CER on 2026-11-29): the tests need a model
that learned something, not a good one."""


def skeleton_inputs_digest():
    """What the skeleton run's output follows from: every file of this package (code, configs,
    corpus definitions), the schedule, the thread count its commands run at (it changes how sums
    are split), the Python version, every installed distribution's version, and espeak-ng's (CPU
    training and synthesis are deterministic, so equal inputs give equal checkpoints)."""
    import hashlib
    import importlib.metadata
    import os
    import platform
    from pathlib import Path

    import fairseq_subnets
    from fairseq_subnets.data.synth import espeak_version

    threads = os.environ.get(THREADS_VARIABLE)
    digest = hashlib.sha256(repr((SKELETON_SCHEDULE, threads, platform.python_version(), espeak_version())).encode())
    for distribution in sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()):
        digest.update(distribution.encode() + b"\n")
    package = Path(fairseq_subnets.__file__).parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def skeleton_run(request, tmp_path_factory):
    """The demo pipeline's run (synthesis, pretraining, fine-tuning, decoding) at SKELETON_SCHEDULE.
    Kept in pytest's cache folder under the digest of its inputs, so the next session, or another
    session now (it waits while one builds it), reuses it while nothing it follows from has
    changed: tests must only read its files. A session marks the run it uses with a shared lock
    and removes the runs no session uses (about 200 MB each). Without pytest's cache
    (`-p no:cacheprovider`) it runs in this session's temporary folder."""
    import fcntl
    import json

    from fairseq_subnets.demo import SkeletonResult

    cache = getattr(request.config, "cache", None)
    if cache is None:
        settings = SkeletonSettings(out_dir=tmp_path_factory.mktemp("skeleton"), **SKELETON_SCHEDULE)
        yield settings, run_skeleton(settings, say=lambda message: None)
        return
    runs = cache.mkdir("skeleton")
    settings = SkeletonSettings(out_dir=runs / skeleton_inputs_digest(), **SKELETON_SCHEDULE)
    with open(settings.out_dir.with_suffix(".use"), "w") as in_use:
        fcntl.flock(in_use, fcntl.LOCK_SH)  # held for the session: no other session removes the run
        with open(settings.out_dir.with_suffix(".build"), "w") as building:
            fcntl.flock(building, fcntl.LOCK_EX)  # one session builds, the others wait for it
            summary = settings.out_dir / "summary.json"  # written last, atomically, by run_skeleton
            if summary.exists():
                result = SkeletonResult(**json.loads(summary.read_text()))
            else:
                result = run_skeleton(settings, say=lambda message: None)
        remove_unused_runs(runs, keep=settings.out_dir)
        yield settings, result


def remove_unused_runs(runs, keep):
    """Removes every skeleton run in `runs` but `keep` that no session uses."""
    import fcntl
    import shutil

    for use_lock in runs.glob("*.use"):
        run = use_lock.with_suffix("")
        if run == keep:
            continue
        with open(use_lock) as in_use:
            try:
                fcntl.flock(in_use, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            (run / "summary.json").unlink(missing_ok=True)  # incomplete from here on
            shutil.rmtree(run, ignore_errors=True)
            run.with_suffix(".build").unlink(missing_ok=True)
            use_lock.unlink()
