"""Where cells run: threads of this process (the default), or jobs of submitit, either on this
machine (`submitit-local`, each cell in its own process) or on a Slurm cluster (`slurm`).

An executor has `slots` (cells running at the same time) and `run(cell, results, runner)`, which
runs the cell's work with a CellContext (holding `runner`, what runs its fairseq commands) and
returns its result. Caching never happens here (see
scheduler.py): an executor only runs work it is handed.

On Slurm each cell is one job on one node with `ranks x gpus_per_rank` GPUs; its training command
launches its own ranks through fairseq's distributed training (the cell's world size is passed
through), so a multi-GPU cell stays one fairseq run. The run folder must be on a file system the
nodes share. submitit keeps every job's stdout, stderr and pickled result under
`<run>/submitit/<cell name>/`.
"""
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from .cells import Cell, CellContext

EXECUTORS = ("local", "submitit-local", "slurm")


@dataclass
class SlurmOptions:
    """Per-cell Slurm resources, from a grid file's `slurm:` section or `--slurm KEY=VALUE`."""
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time_min: int = 240
    gpus_per_rank: int = 1
    cpus_per_rank: int = 8
    mem_gb_per_rank: Optional[int] = None


def slurm_options(raw, where: str, base: Optional[SlurmOptions] = None) -> SlurmOptions:
    """`base` (default: the defaults) updated with the mapping `raw`; ValueError names `where`
    and the key of an unknown key or a value of the wrong type."""
    options = SlurmOptions(**vars(base)) if base is not None else SlurmOptions()
    if raw is None:
        return options
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping of Slurm options")
    kinds = {field.name: field.type for field in fields(SlurmOptions)}
    for key, value in raw.items():
        if key not in kinds:
            raise ValueError(f"{where}: unknown key {key} (known: {', '.join(kinds)})")
        wants_int = kinds[key] in (int, Optional[int])
        if value is None and kinds[key] is not int:
            pass  # an optional setting left unset
        elif wants_int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{where}: {key} must be a non-negative integer, got {value!r}")
        elif not wants_int and not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string, got {value!r}")
        setattr(options, key, value)
    return options


class LocalExecutor:
    """Cells run as threads of this process, `jobs` at a time; each gets an equal share of the cores
    (its fairseq subprocesses' OMP_NUM_THREADS) and no GPU (several ranks run as CPU processes)."""

    def __init__(self, jobs: int = 1):
        self.slots = jobs

    def run(self, cell: Cell, results: dict, runner) -> dict:
        return cell.work(shared_cores_context(cell, results, self.slots, runner))


def shared_cores_context(cell: Cell, results: dict, slots: int, runner) -> CellContext:
    """The context of a cell sharing this machine's cores with `slots - 1` others, without GPUs."""
    return CellContext(Path(cell.directory), results, threads=max(1, (os.cpu_count() or 1) // slots), gpus=0,
                       runner=runner)


class SubmititExecutor:
    """Each cell is one submitit job, `jobs` of them submitted at a time; `cluster` is submitit's
    "local" (a process on this machine: no GPUs, the cores shared like LocalExecutor) or "slurm"."""

    def __init__(self, folder: Path, cluster: str, jobs: int = 1, slurm: Optional[SlurmOptions] = None):
        import submitit  # noqa: F401  (fail here, before any cell starts, if it is not installed)

        self.folder, self.cluster, self.slots = Path(folder), cluster, jobs
        self.slurm = slurm or SlurmOptions()

    def parameters(self, cell: Cell) -> dict:
        """submitit's parameters for one cell (what it asks of the cluster)."""
        if self.cluster == "local":
            return {"name": cell.name, "timeout_min": self.slurm.time_min}
        options = self.slurm
        parameters = {
            "name": cell.name, "timeout_min": options.time_min, "nodes": 1, "tasks_per_node": 1,
            "gpus_per_node": cell.ranks * options.gpus_per_rank, "cpus_per_task": cell.ranks * options.cpus_per_rank,
            "slurm_partition": options.partition, "slurm_account": options.account, "slurm_qos": options.qos,
            "slurm_constraint": options.constraint,
        }
        if options.mem_gb_per_rank is not None:
            parameters["mem_gb"] = cell.ranks * options.mem_gb_per_rank
        return {key: value for key, value in parameters.items() if value is not None}

    def context(self, cell: Cell, results: dict, runner) -> CellContext:
        if self.cluster == "local":
            return shared_cores_context(cell, results, self.slots, runner)
        return CellContext(Path(cell.directory), results, threads=cell.ranks * self.slurm.cpus_per_rank,
                           gpus=cell.ranks * self.slurm.gpus_per_rank, runner=runner)

    def run(self, cell: Cell, results: dict, runner) -> dict:
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / cell.name, cluster=self.cluster)
        executor.update_parameters(**self.parameters(cell))
        job = executor.submit(cell.work, self.context(cell, results, runner))
        return job.result()


def make_executor(name: str, jobs: int, run_dir: Path, slurm: Optional[SlurmOptions] = None):
    """The executor called `name` (one of EXECUTORS)."""
    if name == "local":
        return LocalExecutor(jobs)
    if name in ("submitit-local", "slurm"):
        return SubmititExecutor(Path(run_dir) / "submitit", "local" if name == "submitit-local" else "slurm",
                                jobs, slurm)
    raise ValueError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
