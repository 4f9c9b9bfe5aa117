"""`fairseq-subnets grid GRID.yaml`: the language-subnetwork experiment grid (Storey et al. 2025).

See fairseq_subnets/grid.py for what runs; every training and decoding step is a stock fairseq
subprocess with its own log under OUT. The grid file is checked completely before anything runs.
"""
import sys
from pathlib import Path

from .main import QUIET_HELP, UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "grid",
        help="run upstream x downstream x sparsity x mask-source fine-tuning cells; resumable",
        description="Runs every cell of GRID (upstream fine-tuning per language, pruning, downstream "
        "fine-tuning with a fixed mask, fairseq-generate on the test set) and writes OUT/results.csv, "
        "OUT/results.json and OUT/iou.csv. Interrupted? Run the same command again: finished cells are "
        "skipped and unfinished ones resume from their last checkpoint. Then: fairseq-subnets report OUT.",
        epilog="grid file keys: see examples/storey2025/grid.yaml",
    )
    parser.add_argument("grid", type=Path, metavar="GRID", help="grid yaml file")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: runs/<grid name>)")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at the same time (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="check the grid file and list the cells, run nothing")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    parser.set_defaults(func=run)


def run(args):
    from ..grid import GridError, GridRun, load_grid, plan_cells
    from ..runner import RunError

    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1")
    try:
        spec = load_grid(args.grid)
    except GridError as error:
        raise UserError(str(error)) from None
    out = (args.out or Path("runs") / spec.name).resolve()
    cells = plan_cells(spec)
    if args.dry_run:
        for cell in cells:
            print(cell.name)
        print(f"{len(spec.upstream.languages) * len(spec.seeds)} upstream models, {len(cells)} downstream cells")
        return 0
    from tqdm import tqdm

    from ..plugin.prune import PruneError

    total = len(cells) + len(spec.upstream.languages) * len(spec.seeds)
    with tqdm(total=total, unit="cell", disable=True if args.quiet else None, file=sys.stderr) as progress:
        runner = GridRun(spec, out, jobs=args.jobs, say=progress.write, progress=progress)
        try:
            results = runner.run()
        except (RunError, GridError, PruneError) as error:
            raise UserError(f"{error}\n(finished cells are kept; fix the cause and run the same command again)") from None
    print(f"results: {results} ({len(runner.rows)} of {total} cells finished); iou: {out / 'iou.csv'}")
    print(f"views: fairseq-subnets report {out} --out {out / 'report'}")
    return 0
