"""`fairseq-subnets bench prune | train | tuners | deploy | data | data-wait | rehearsal | gpu | cli`: the
benchmarks of `fairseq_subnets.benchmarks`, one group.

Each prints a table of measurements and their ratios against named references (`bench rehearsal`:
wall time and peak memory of each step of the workflow) as text, or one JSON object with `--json`
(`bench deploy`: or its decoding table as CSV with `--csv`; progress then goes to stderr), and exits
2 on bad settings, before anything runs.
"""
import json
import sys

from .main import UserError


def register(subparsers):
    group = subparsers.add_parser(
        "bench", help="benchmarks: speed and memory against named references measured in the same run",
        description="Each benchmark prints its measurements and their ratios against named references measured "
        "in the same run (a ratio holds on another machine, an absolute time does not; `rehearsal` reports "
        "absolute wall time and peak memory per step), or one JSON object with --json.")
    benchmarks = group.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    _register_prune(benchmarks)
    _register_train_step(benchmarks)
    _register_tuners(benchmarks)
    _register_deploy(benchmarks)
    _register_data_check(benchmarks)
    _register_data_wait(benchmarks)
    _register_rehearsal(benchmarks)
    _register_gpu_check(benchmarks)
    _register_cli_startup(benchmarks)


def _run_and_print(args, settings, run, format_report, format_csv=None) -> int:
    """Checks `settings` (a ValueError is the user's), runs the benchmark, prints its report (as
    JSON with --json, as CSV with --csv where the benchmark has a `format_csv`)."""
    try:
        settings.check()
    except ValueError as error:
        raise UserError(str(error)) from None
    as_csv = getattr(args, "csv", False)
    say = (lambda message: print(message, file=sys.stderr)) if args.json or as_csv else print
    try:
        result = run(settings, say)
    except RuntimeError as error:
        raise UserError(str(error)) from None
    if as_csv:
        print(format_csv(result), end="")
    else:
        print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_report(result))
    return 0


# ----------------------------------------------------------------------------------- bench prune


def _register_prune(subparsers):
    parser = subparsers.add_parser(
        "prune", help="speed and memory of global L1 pruning against torch.nn.utils.prune",
        description="Builds an XLS-R-300M-shaped encoder (24 layers, width 1024, FFN 4096: 302M prunable "
        "weights) with random weights and prunes it to --sparsity with torch.nn.utils.prune."
        "global_unstructured(L1Unstructured) and with ours, each in its own process; checks the masks "
        "agree, then times mask files, IOU (against the plain torch expression) and union ratio. Needs "
        "about 17 GiB of memory for the reference at full size and a few minutes. Then writes and reads "
        "random masks of the same shapes at sparsity 0.1, 0.5 and 0.9 as mask files, format version 3 "
        "against version 2 (raw bits), reporting bits per weight against the entropy H(s).",
    )
    parser.add_argument("--quick", action="store_true", help="4 layers instead of 24 (a smoke test)")
    parser.add_argument("--layers", type=int, help="encoder layers (default: 24, or 4 with --quick)")
    parser.add_argument("--width", type=int, default=1024, help="default: %(default)s")
    parser.add_argument("--ffn", type=int, default=4096, help="default: %(default)s")
    parser.add_argument("--sparsity", type=float, default=0.9, help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in both processes (default: %(default)s: on a small shared machine "
                        "multi-threaded regions stall while another process holds a core)")
    parser.add_argument("--only-mask-files", action="store_true",
                        help="run only the mask file rows (about 2 GiB at full size), not the pruning processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_prune_bench)


def run_prune_bench(args) -> int:
    from ..benchmarks.prune import PruneBenchSettings, format_report, run_benchmark

    settings = PruneBenchSettings(args.layers or (4 if args.quick else 24), args.width, args.ffn, args.sparsity,
                                  args.threads, args.only_mask_files)
    return _run_and_print(args, settings, run_benchmark, format_report)


# ----------------------------------------------------------------------------------- bench train


def _register_train_step(subparsers):
    parser = subparsers.add_parser(
        "train", help="time masked and learned-mask training and decoding against the same model without masks",
        description="Builds a wav2vec2 CTC model (subnets_wav2vec_ctc; BASE-sized by default: 12 layers, width "
        "768, FFN 3072) with random weights and, in one process with the models taking turns, times "
        "(1) a training step (forward, CTC loss, backward, Adam) of the model without masks against the same "
        "weights under a fixed global-L1 mask on every prunable encoder matrix (target: at most 1.10x), with "
        "the active per-language mask switched every step against one language (at most 1.02x), as a pathway "
        "step (the weights outside the active language's masks held; at most 1.20x the model without masks), "
        "with group lasso on every matrix (at most 1.10x), and one pruning event of 20% of the 8x1 blocks (at "
        "most 2 training steps), and with learned masks on the FFN (frozen weights, ORI scores, sparsity 0.1; at most 1.25x against training "
        "every weight without masks), also against the same learned masks binarised by a full sort as "
        "S3-Router's code does (below 1.00x), and (2) a forward pass of the stock fairseq model holding the "
        "exported (baked) weights against the masked model baked by bake_module (target: 1.00x within noise) "
        "and against the learned-mask model decoding with its cached mask (at most 1.02x). Fails if a pruned "
        "weight becomes nonzero during training, a weight outside every language's mask moves in pathway training, "
        "the two binarisations keep different weights, or baked and stock outputs differ. About 20 minutes with the defaults on a shared 2-core machine (load average 4).",
    )
    _add_step_arguments(parser)
    parser.add_argument("--sparsity", type=float, default=0.9, help="default: %(default)s")
    parser.set_defaults(func=run_train_step_bench)


def _add_step_arguments(parser):
    """The model size and timing options of `bench train` and `bench tuners` (StepBenchSettings)."""
    parser.add_argument("--quick", action="store_true", help="4 encoder layers instead of 12 (about a minute)")
    parser.add_argument("--layers", type=int, help="encoder layers (default: 12, or 4 with --quick)")
    parser.add_argument("--width", type=int, default=768, help="default: %(default)s")
    parser.add_argument("--ffn", type=int, default=3072, help="default: %(default)s")
    parser.add_argument("--heads", type=int, help="attention heads (default: width / 64)")
    parser.add_argument("--batch", type=int, default=2, help="utterances per batch (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of 16 kHz audio per utterance (default: %(default)s)")
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps per model (default: %(default)s)")
    parser.add_argument("--train-warmup", type=int, default=1, help="untimed training steps per model first (default: %(default)s)")
    parser.add_argument("--decode-steps", type=int, default=10, help="timed forward passes per model (default: %(default)s)")
    parser.add_argument("--decode-warmup", type=int, default=2, help="untimed forward passes per model first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: %(default)s: on a small shared machine multi-threaded regions "
                        "stall while another process holds a core, which is noise that does not belong to either model)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _step_settings(args, **extra):
    from ..benchmarks.train_step import StepBenchSettings

    return StepBenchSettings(
        layers=args.layers or (4 if args.quick else 12), width=args.width, ffn=args.ffn, heads=args.heads,
        batch=args.batch, seconds=args.seconds, train_steps=args.train_steps, train_warmup=args.train_warmup,
        decode_steps=args.decode_steps, decode_warmup=args.decode_warmup, threads=args.threads, seed=args.seed,
        **extra)


def run_train_step_bench(args) -> int:
    from ..benchmarks.train_step import format_step_report, run_step_benchmark

    return _run_and_print(args, _step_settings(args, sparsity=args.sparsity), run_step_benchmark, format_step_report)


# ---------------------------------------------------------------------------------- bench tuners


def _register_tuners(subparsers):
    parser = subparsers.add_parser(
        "tuners", help="time training with each tuner against full fine-tuning, and merged decoding",
        description="Builds a wav2vec2 CTC model (BASE-sized by default) with random weights and a copy with each "
        "registered tuner (its default targets), frozen as "
        "+model.tuner does, and, in one process with the models taking turns, times (1) a training step of each "
        "against full fine-tuning of the same model (target at most 1.00x for LoRA and S2-LoRA), (2) AdaLoRA's "
        "allocator step against its training step (at most 0.05x), and (3) a forward pass of each merged model "
        "against the stock fairseq model holding its export (1.00x within noise). Fails if a merged model and "
        "its export decode differently.",
    )
    _add_step_arguments(parser)
    parser.set_defaults(func=run_tuner_bench)


def run_tuner_bench(args) -> int:
    from ..benchmarks.tuners import format_tuner_report, run_tuner_benchmark

    return _run_and_print(args, _step_settings(args), run_tuner_benchmark, format_tuner_report)


# ---------------------------------------------------------------------------------- bench deploy


def _register_deploy(subparsers):
    parser = subparsers.add_parser(
        "deploy", help="time decoding with sparse kernels against the dense export; weight memory; HF export/import",
        description="Builds a random wav2vec2 CTC model of --shape (XLS-R 300M by default; nothing is downloaded) "
        "and, for each mask set (global L1 at each of --sparsities, 8x1 blocks at each of --block-sparsities), "
        "times the whole model's forward pass on one utterance of each length in --seconds (eval, no grad, "
        "feature extractor included) at each thread count in --threads: the stock model holding the baked "
        "export (dense, the reference) and the plugin model with model.sparse_decoding=on and =auto take turns, "
        "each decoding once untimed first. Prints dense / sparse speed-ups with their per-round range, the "
        "break-even sparsity per thread count and length, the resident weight memory of each model (distinct "
        "tensor storages reachable from it), HF export and import time (interop.hf, in a temporary folder), "
        "and the targets with PASS or FAIL: at least 1.5x at global L1 90% on 1 thread (aim 2x), auto never "
        "below 0.98x, weight memory at 90% at most 0.35x of dense. At XLS-R shape it needs about 15 GB of memory "
        "and, with the defaults, half an hour of a 2-core machine (docs/benchmarks.md has measured "
        "times): narrow it with the options below; `--shape tiny --sparsities 0.9 --block-sparsities '' --threads 1 "
        "--seconds 1 --repeats 1` takes seconds.",
    )
    parser.add_argument("--shape", default="xlsr_300m", choices=("tiny", "base", "xlsr_300m"),
                        help="model shape (default: %(default)s)")
    parser.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95", metavar="S,S",
                        help="global-L1 sparsities, comma-separated (default: %(default)s)")
    parser.add_argument("--block-sparsities", default="0.9", metavar="S,S",
                        help="8x1 block sparsities, comma-separated; '' for none (default: %(default)s)")
    parser.add_argument("--threads", default="1,2", metavar="N,N",
                        help="torch thread counts, comma-separated (default: %(default)s)")
    parser.add_argument("--seconds", default="4,15", metavar="S,S",
                        help="utterance lengths in seconds of 16 kHz audio, comma-separated (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed passes per model at each setting (default: %(default)s)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object")
    output.add_argument("--csv", action="store_true", help="print the decoding table as CSV")
    parser.set_defaults(func=run_deploy_bench)


def _comma_list(text: str, option: str, convert):
    """The values of a comma-separated option ('' for none); UserError naming the option otherwise."""
    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item and not text.strip():
            continue
        try:
            values.append(convert(item))
        except ValueError:
            kind = "a whole number" if convert is int else "a number"
            raise UserError(f"{option}: {item!r} is not {kind}") from None
    return tuple(values)


def run_deploy_bench(args) -> int:
    from ..benchmarks.deploy import DeployBenchSettings, format_deploy_csv, format_deploy_report, run_deploy_benchmark

    settings = DeployBenchSettings(
        shape=args.shape, sparsities=_comma_list(args.sparsities, "--sparsities", float),
        block_sparsities=_comma_list(args.block_sparsities, "--block-sparsities", float),
        threads=_comma_list(args.threads, "--threads", int), seconds=_comma_list(args.seconds, "--seconds", float),
        repeats=args.repeats)
    return _run_and_print(args, settings, run_deploy_benchmark, format_deploy_report, format_deploy_csv)


# ------------------------------------------------------------------------------------ bench data


def _register_data_check(subparsers):
    parser = subparsers.add_parser(
        "data", help="time `data check` on thousands of files against reading their headers alone",
        description="Writes a manifest of --files utterances (hard links of one WAV) and times, in turn, "
        "`data check` on it, soundfile.info on every file (header reads alone: target at most 1.5x) and "
        "soundfile.read on every file (decoding, for information). Fails if the check reports a problem.",
    )
    parser.add_argument("--files", type=int, default=3000, help="utterances in the manifest (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per utterance (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds of each (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of each first (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_data_check_bench)


def run_data_check_bench(args) -> int:
    from ..benchmarks.data_check import DataCheckBenchSettings, format_data_check_report, run_data_check_benchmark

    settings = DataCheckBenchSettings(files=args.files, seconds=args.seconds, steps=args.steps, warmup=args.warmup)
    return _run_and_print(args, settings, run_data_check_benchmark, format_data_check_report)


# ------------------------------------------------------------------------------- bench data-wait


def _register_data_wait(subparsers):
    parser = subparsers.add_parser(
        "data-wait", help="time waiting for monolingual batches against the training step (multilingual)",
        description="Builds subnets_multilingual_finetuning on DATA (one manifest folder per language) and a "
        "subnets_wav2vec_ctc model (BASE-sized by default), then for each training batch, as the trainer draws "
        "them (num_workers 0), times fetching it against one training step on it; prints the ratio and the "
        "data-wait share of the loop (target: at most 0.10).",
    )
    parser.add_argument("data", metavar="DATA", help="folder with one manifest folder per language")
    parser.add_argument("--languages", required=True, help="comma-separated, e.g. es,ca,ast")
    parser.add_argument("--quick", action="store_true", help="a 2-layer model of width 64 (a smoke test)")
    parser.add_argument("--max-tokens", type=int, default=400_000, help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=8, help="timed batches (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_data_wait_bench)


def run_data_wait_bench(args) -> int:
    from ..benchmarks.multilingual_data import (DataWaitBenchSettings, format_data_wait_report,
                                                run_data_wait_benchmark)

    size = dict(layers=2, width=64, ffn=128) if args.quick else {}
    settings = DataWaitBenchSettings(args.data, tuple(l for l in args.languages.split(",") if l),
                                     max_tokens=args.max_tokens, steps=args.steps, warmup=args.warmup,
                                     threads=args.threads, **size)
    return _run_and_print(args, settings, run_data_wait_benchmark, format_data_wait_report)


# ------------------------------------------------------------------------------- bench rehearsal


def _register_rehearsal(subparsers):
    parser = subparsers.add_parser(
        "rehearsal", help="run the whole workflow on an XLS-R-300M-shaped model; time and memory per step",
        description="In OUT (empty or new), each step a child process: synthesizes 8 short utterances with "
        "espeak-ng, writes a wav2vec2 pretraining checkpoint with XLS-R's architecture and random weights "
        "(XLS-R 300M size by default), prunes it with `fairseq-subnets prune` (global L1), trains with the "
        "fixed mask through stock fairseq-hydra-train on the shipped xlsr_300m config (CPU, --updates "
        "updates), decodes with stock fairseq-generate, exports, and loads the export in a stock fairseq "
        "process without the plugin. Prints each step's wall time, CPU time and peak RSS (ru_maxrss from os.wait4) "
        "and writes them to OUT/rehearsal.json. Fails if a step fails or the largest peak is over "
        "--budget-gib. At full size about 7 minutes (4.5 of them CPU time) and a 3.7 GiB peak on 2 shared "
        "CPU cores.",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder (empty or new)")
    parser.add_argument("--layers", type=int, default=24, help="encoder layers (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1024, help="default: %(default)s")
    parser.add_argument("--ffn", type=int, default=4096, help="default: %(default)s")
    parser.add_argument("--heads", type=int, default=16,
                        help="attention heads; the width must be a multiple (default: %(default)s)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="default: %(default)s")
    parser.add_argument("--updates", type=int, default=2, help="training updates (default: %(default)s)")
    parser.add_argument("--budget-gib", type=float, default=24.0,
                        help="most peak RSS any step may reach (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_rehearsal_bench)


def run_rehearsal_bench(args) -> int:
    from ..benchmarks.rehearsal import RehearsalSettings, format_rehearsal_report, run_rehearsal

    settings = RehearsalSettings(out_dir=args.out, layers=args.layers, width=args.width, ffn=args.ffn,
                                 heads=args.heads, sparsity=args.sparsity, updates=args.updates,
                                 budget_gib=args.budget_gib)
    return _run_and_print(args, settings, run_rehearsal, format_rehearsal_report)


# ------------------------------------------------------------------------------------- bench gpu


def _register_gpu_check(subparsers):
    parser = subparsers.add_parser(
        "gpu", help="the prepared GPU check: every training mode at XLS-R 300M shape in fp16, one JSON report",
        description="In OUT (empty or new): writes random-noise utterances and an XLS-R-300M-shaped pretraining "
        "checkpoint with random weights, then trains every training mode (stock fine-tuning, the reference; plain; "
        "fixed masks; learned masks; IMP; LTH; multilingual; pathways; each tuner) for 20 updates in fp16 through "
        "stock fairseq-hydra-train on its shipped XLS-R config, one after another on the GPU, then decodes each "
        "with stock fairseq-generate, exports it, and checks that its pruned effective weights are exactly 0. "
        "Writes OUT/gpu_check.json after every step: per mode the updates per second and their ratio to the "
        "reference, the peak GPU memory of the training process, the decode, the export and the zeros check. "
        "Sized for 8 minutes on one 80 GB GPU (--budget-s: no training starts that would end past it). Refuses "
        "to start without a CUDA device unless --dry-run (the same check on the CPU: a tiny model, 2 updates per "
        "mode, fp32). Exits 1 if a mode failed or was skipped.",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder (empty or new)")
    parser.add_argument("--dry-run", action="store_true",
                        help="on the CPU: a 1-layer model of width 256 with a 64-channel feature extractor, 2 "
                        "updates per mode, fp32")
    parser.add_argument("--modes", metavar="M,M", help="comma-separated modes to run (default: all); the "
                        "reference, stock, always runs")
    parser.add_argument("--budget-s", type=float,
                        help="time budget in seconds (default: 480; none with --dry-run)")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.set_defaults(func=run_gpu_check_bench)


def run_gpu_check_bench(args) -> int:
    from ..benchmarks.gpu_check import GpuCheckSettings, format_gpu_check_report, run_gpu_check

    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"no CUDA device (torch {torch.__version__} finds none): run it on a GPU machine, or "
                            "pass --dry-run for the CPU dry mode")
    modes = tuple(mode for mode in (args.modes or "").split(",") if mode)
    preset = GpuCheckSettings.dry if args.dry_run else GpuCheckSettings.full
    settings = preset(args.out, modes=modes, budget_s=args.budget_s)
    try:
        settings.check()
    except (ValueError, RuntimeError) as error:
        raise UserError(str(error)) from None
    say = (lambda message: print(message, file=sys.stderr)) if args.json else print
    result = run_gpu_check(settings, say)
    print(json.dumps(result, indent=2, allow_nan=False) if args.json else format_gpu_check_report(result))
    return 0 if result["all_ok"] else 1


# ------------------------------------------------------------------------------------- bench cli


def _register_cli_startup(subparsers):
    parser = subparsers.add_parser(
        "cli", help="time `fairseq-subnets --help` against starting the same Python with nothing to do",
        description="Starts the installed fairseq-subnets console script with --help and `python -c pass` of the "
        "same interpreter in turn, each a fresh process, and prints the median wall time of each and their "
        "ratio. Target: --help within 0.5 s. Every command builds the same parser first, so this is also what "
        "each group's --help and each argument error costs.",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed starts of each (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed starts of each first (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_cli_bench)


def run_cli_bench(args) -> int:
    from ..benchmarks.cli_startup import CliBenchSettings, format_cli_report, run_cli_benchmark

    settings = CliBenchSettings(steps=args.steps, warmup=args.warmup)
    return _run_and_print(args, settings, run_cli_benchmark, format_cli_report)
