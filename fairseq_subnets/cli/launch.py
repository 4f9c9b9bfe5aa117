"""`fairseq-subnets launch`: stock fairseq-hydra-train as N distributed ranks on one CPU machine.

On GPUs use fairseq's own launch (`distributed_training.distributed_world_size=N` spawns one
process per GPU). On CPU stock fairseq cannot start ranks by itself, and one of its failure modes
exits 0 having trained nothing; this starts one process per rank with gloo and legacy_ddp, stops
all ranks when one fails, and fails unless training finished.
"""
import argparse
from pathlib import Path

from .main import UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "launch",
        help="run stock fairseq-hydra-train on N CPU ranks (gloo, legacy_ddp)",
        description="Starts N `fairseq-hydra-train ARGS...` processes as the ranks of one distributed "
        "run on this machine (gloo backend, legacy_ddp, a TCP rendezvous on 127.0.0.1), each logging "
        "to LOG_DIR/train_rank<r>.log. Put the fairseq-hydra-train arguments after `--`. Exit status 0 "
        "only if every rank exited 0 and rank 0 finished training; rerunning the same command resumes "
        "from checkpoint_last.pt.",
        epilog="example: fairseq-subnets launch --nprocs 2 --log-dir runs/ddp -- --config-dir CFG "
        "--config-name tiny common.user_dir=... task.data=... model.w2v_path=... checkpoint.save_dir=...",
    )
    parser.add_argument("--nprocs", type=int, required=True, help="number of ranks (processes), at least 2")
    parser.add_argument("--log-dir", type=Path, default=Path("."), help="where rank logs go (default: %(default)s)")
    parser.add_argument("--port", type=int, default=None, help="rendezvous port (default: a free one)")
    parser.add_argument("--threads-per-rank", type=int, default=None,
                        help="OMP_NUM_THREADS of each rank (default: CPU cores / nprocs)")
    parser.add_argument("train_arguments", nargs=argparse.REMAINDER, metavar="-- ARGS",
                        help="fairseq-hydra-train arguments")
    parser.set_defaults(func=run)


def run(args):
    from ..runner import RunError, launch_cpu_ranks

    arguments = args.train_arguments[1:] if args.train_arguments[:1] == ["--"] else args.train_arguments
    if args.nprocs < 2:
        raise UserError(f"--nprocs {args.nprocs}: a distributed run needs at least 2 ranks; "
                        "run fairseq-hydra-train directly for one")
    if not any(argument.startswith("--config-name") for argument in arguments):
        raise UserError("give the fairseq-hydra-train arguments after `--`, including --config-name")
    if any(argument.startswith("distributed_training.distributed_rank") for argument in arguments):
        raise UserError("do not set distributed_training.distributed_rank: launch sets it for every rank")
    try:
        launch_cpu_ranks(arguments, args.nprocs, args.log_dir, port=args.port, threads_per_rank=args.threads_per_rank)
    except RunError as error:
        raise UserError(str(error)) from None
    print(f"{args.nprocs} ranks finished; logs: {args.log_dir}/train_rank<r>.log")
    return 0
