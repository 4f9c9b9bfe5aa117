"""`fairseq-subnets bench-train`: speed of fixed-mask training and of decoding a baked model."""
import json
import sys

from .main import UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "bench-train", help="time fixed-mask training and baked decoding against the same model without masks",
        description="Builds a wav2vec2 CTC model (subnets_wav2vec_ctc; BASE-sized by default: 12 layers, width "
        "768, FFN 3072) with random weights and, in one process with the two models taking turns, times "
        "(1) a training step (forward, CTC loss, backward, Adam) of the model without masks against the same "
        "weights under a fixed global-L1 mask on every prunable encoder matrix (target: at most 1.10x), and "
        "(2) a forward pass of the stock fairseq model holding the exported (baked) weights against the masked "
        "model baked by bake_module (target: 1.00x within noise). Fails if a pruned weight becomes nonzero "
        "during training or baked and stock outputs differ. About 2 minutes with the defaults on one core.",
    )
    parser.add_argument("--quick", action="store_true", help="4 encoder layers instead of 12 (about a minute)")
    parser.add_argument("--layers", type=int, help="encoder layers (default: 12, or 4 with --quick)")
    parser.add_argument("--width", type=int, default=768, help="default: %(default)s")
    parser.add_argument("--ffn", type=int, default=3072, help="default: %(default)s")
    parser.add_argument("--heads", type=int, help="attention heads (default: width / 64)")
    parser.add_argument("--batch", type=int, default=2, help="utterances per batch (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of 16 kHz audio per utterance (default: %(default)s)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="default: %(default)s")
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps per model (default: %(default)s)")
    parser.add_argument("--train-warmup", type=int, default=1, help="untimed training steps per model first (default: %(default)s)")
    parser.add_argument("--decode-steps", type=int, default=10, help="timed forward passes per model (default: %(default)s)")
    parser.add_argument("--decode-warmup", type=int, default=2, help="untimed forward passes per model first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: %(default)s: on a small shared machine multi-threaded regions "
                        "stall while another process holds a core, which is noise that does not belong to either model)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_bench_train)


def run_bench_train(args) -> int:
    from ..plugin.step_benchmark import StepBenchSettings, format_step_report, run_step_benchmark

    settings = StepBenchSettings(
        layers=args.layers or (4 if args.quick else 12), width=args.width, ffn=args.ffn, heads=args.heads,
        batch=args.batch, seconds=args.seconds, sparsity=args.sparsity, train_steps=args.train_steps,
        train_warmup=args.train_warmup, decode_steps=args.decode_steps, decode_warmup=args.decode_warmup,
        threads=args.threads, seed=args.seed,
    )
    try:
        settings.check()
    except ValueError as error:
        raise UserError(str(error)) from None
    say = (lambda message: print(message, file=sys.stderr)) if args.json else print
    result = run_step_benchmark(settings, say)
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(format_step_report(result))
    return 0
