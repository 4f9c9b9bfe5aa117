"""`fairseq-subnets grid GRID.yaml`: run an experiment grid (the paper the grid file's `method:`
names) through the experiment engine.

Each cell is stock fairseq subprocesses with its own folder and logs under OUT; the grid file is
checked completely before anything runs. See fairseq_subnets/engine/ and fairseq_subnets/experiments/.
The experiment and engine modules are imported when the command runs, not when the parser is built.
"""
import sys
from pathlib import Path

import yaml

from ..atomic import cannot_write_message, check_folder_writable
from .main import QUIET_HELP, UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "grid",
        help="run an experiment grid's cells (fine-tuning, pruning, decoding); resumable",
        description="Runs every cell of GRID, for the method its `method:` key names (required): storey2025 "
        "(upstream fine-tuning per language, pruning, downstream fine-tuning with a fixed mask), fu2022 (weight "
        "fine-tuning, learned masks, S3-Router-P against global L1, a bundle, mask similarity), liu2023 (full "
        "fine-tuning against the tuners, S2-LoRA and AdaLoRA ranks, out-of-domain decoding) or yang2023 (dense, "
        "language-agnostic and language-specific pruning, pathways, group lasso, mask overlaps); every model is "
        "decoded with fairseq-generate. Writes OUT/results.csv (every finished cell, whatever was interrupted), "
        "OUT/results.json and the method's other results files. Interrupted? Run the same command again: "
        "finished cells are skipped and unfinished ones resume from their last checkpoint; a cell whose "
        "settings, config files, input files, upstream cells or package version changed is run anew. "
        "Then: fairseq-subnets report OUT.",
        epilog="grid file keys: see examples/storey2025/grid.yaml, examples/fu2022/grid.yaml, "
        "examples/liu2023/grid.yaml and examples/yang2023/grid.yaml",
    )
    parser.add_argument("grid", type=Path, metavar="GRID", help="grid yaml file")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<grid name>)")
    parser.add_argument("--shared", type=Path, default=None, metavar="DIR",
                        help="where grids share the corpus they synthesize and the model they pretrain, each in a "
                        "folder named by the digest of what makes it: a grid finds them there when another grid "
                        "made them alike, and makes them otherwise (default: `shared` beside OUT, e.g. runs/shared)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at the same time: threads, or submitit jobs in flight (default: %(default)s)")
    parser.add_argument("--executor", default="local", choices=("local", "submitit-local", "slurm"),
                        help="where cells run: threads of this process (default), one submitit process per "
                        "cell on this machine, or one Slurm job per cell")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="a Slurm option over the grid file's `slurm:` section (partition, account, qos, "
                        "constraint, time_min, gpus_per_rank, cpus_per_rank, mem_gb_per_rank); repeatable")
    parser.add_argument("--dry-run", action="store_true", help="check the grid file and list the cells, run nothing")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    parser.set_defaults(func=run)


def parse_pairs(pairs, flag):
    """['partition=gpu', 'time_min=60'] -> {'partition': 'gpu', 'time_min': 60} (values read as YAML)."""
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def shared_dir_of(given, spec, out: Path):
    """The shared folder of a grid that synthesizes its corpus or pretrains its model: --shared, else
    `shared` beside OUT; None for a grid that does neither (--shared given there would do nothing,
    and is refused)."""
    if spec.data is not None and spec.pretrained is not None:
        if given is not None:
            raise UserError(f"--shared {given}: grid {spec.path} names its data and its pretrained checkpoint, so "
                            "it synthesizes and pretrains nothing to share; leave --shared out")
        return None
    shared = (given or out.parent / "shared").resolve()
    if shared.exists() and not shared.is_dir():
        raise UserError(f"--shared {shared}: is a file; name a folder (it is created if needed)")
    return shared


def planned(grid_run):
    """`grid_run()`, a GridRun, which plans every cell and refuses a cell that cannot run
    (engine/grid_run.py) before any runs; its GridError as a UserError."""
    from ..engine.grid_file import GridError

    try:
        return grid_run()
    except GridError as error:
        raise UserError(str(error)) from None


def run(args):
    from ..engine.cells import CellError
    from ..engine.executors import make_executor, slurm_options
    from ..engine.scheduler import CellFailed
    from ..experiments import method_of_grid_file

    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: is a file; name a folder (it is created if needed)")
    try:
        method = method_of_grid_file(args.grid)
        spec = method.load_grid(args.grid)
        slurm = slurm_options(parse_pairs(args.slurm, "--slurm"), "--slurm", base=spec.slurm)
    except ValueError as error:  # the method's GridError, MethodError, bad --slurm values
        raise UserError(str(error)) from None
    out = (args.out or Path("runs") / spec.name).resolve()
    if args.out is None and out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file, where the grid's default output folder runs/{spec.name} goes; "
                        "name a folder with --out")
    shared = shared_dir_of(args.shared, spec, out)
    for folder in (out, shared) if shared is not None else (out,):
        try:
            check_folder_writable(folder)
        except OSError as error:
            raise UserError(cannot_write_message(folder, error)) from None
    if args.dry_run:
        planned(lambda: method.GridRun(spec, out, shared_dir=shared))
        if shared is not None:
            print(f"shared: {shared} (the corpus it synthesizes and the model it pretrains)")
        print("\n".join(method.dry_run_lines(spec)))
        return 0
    from tqdm import tqdm

    try:
        executor = make_executor(args.executor, args.jobs, out, slurm)
    except ImportError as error:
        raise UserError(f"--executor {args.executor}: {error} (pip install submitit)") from None
    with tqdm(unit="cell", disable=True if args.quiet else None, file=sys.stderr) as progress:
        grid_run = planned(lambda: method.GridRun(spec, out, executor, say=progress.write, progress=progress,
                                                  shared_dir=shared))
        progress.reset(total=len(grid_run.cells))
        try:
            results = grid_run.run()
        except (CellFailed, CellError) as error:
            raise UserError(f"{error}\n(finished cells are kept; fix the cause and run the same command again)") from None
    print(f"results: {results} ({len(grid_run.results)} of {len(grid_run.cells)} cells finished)")
    print(f"views: fairseq-subnets report {out} --out {out / 'report'}")
    return 0
