"""`fairseq-subnets adapters save | apply | ranks | info`: what a tuner run trained, as a small file.

An adapter file (plugin.formats.adapters) holds a `+model.tuner=...` run's tuner parameters and output
layer, with the method, the run's config, its dictionary and the fingerprint of the backbone it
was trained on. `apply` rebuilds the run's checkpoint from the file and a checkpoint holding that
backbone (the pretraining checkpoint, usually), refusing any other backbone.
"""
import json
import os

from ..atomic import check_writable, write_atomically
from .main import UserError, writing


def register(subparsers):
    parser = subparsers.add_parser(
        "adapters", help="a tuner run's trained parameters as a small file, and back to a checkpoint",
        description="Saves what a +model.tuner=... run trained (tuner parameters and output layer) with the "
        "fingerprint of its backbone, and applies such a file to a checkpoint holding that backbone.")
    commands = parser.add_subparsers(dest="adapters_command", metavar="SUBCOMMAND", required=True)

    save = commands.add_parser("save", help="the adapter file of a tuner run's checkpoint")
    save.add_argument("checkpoint", metavar="CKPT")
    save.add_argument("--out", required=True, metavar="FILE", help="adapter file to write (safetensors)")
    save.set_defaults(func=run_save)

    apply = commands.add_parser("apply", help="rebuild the run's checkpoint from an adapter file and its backbone")
    apply.add_argument("adapter", metavar="FILE")
    apply.add_argument("--backbone", required=True, metavar="CKPT",
                       help="checkpoint holding the backbone: the pretraining checkpoint the run started from")
    apply.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    apply.set_defaults(func=run_apply)

    ranks = commands.add_parser("ranks", help="the rank each adapted matrix uses (LoRA, alpha-LoRA, AdaLoRA, S2-LoRA)",
                                description="The rank in use of every adapted matrix, as a table of encoder layers "
                                "x q, k, v, out, fc1, fc2: AdaLoRA's kept triplets, S2-LoRA's coefficients with "
                                "|s| >= 1e-4, LoRA's r, alpha-LoRA's r (0 while its scalar is 0).")
    ranks.add_argument("source", metavar="FILE", help="an adapter file or a tuner run's checkpoint")
    ranks.add_argument("--csv-out", metavar="CSV",
                       help="also write the table as CSV to this file (layer, then one column per kind)")
    ranks.add_argument("--plot", metavar="PNG", help="also draw it as a heatmap (a .png file)")
    ranks.set_defaults(func=run_ranks)

    info = commands.add_parser("info", help="method, options, size and backbone of an adapter file")
    info.add_argument("adapter", metavar="FILE")
    info.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    info.set_defaults(func=run_info)


def _adapters():
    """plugin.formats.adapters, imported when an adapter command runs (it imports fairseq)."""
    from ..plugin.formats import adapters

    return adapters


def _user_input(work):
    """`work()`, its ValueError (AdapterError, CheckpointLoadError) turned into a one-line UserError."""
    try:
        return work()
    except ValueError as error:
        raise UserError(str(error)) from None


def _written(out: str, make):
    """Checks that `out` takes a file before any work, then writes the bytes of `make()` there
    atomically; `make()` returns (result, bytes) and the result is returned."""
    with writing(out):
        check_writable(out)
    result, data = _user_input(make)
    with writing(out):
        write_atomically(out, data)
    return result


def run_save(args) -> int:
    adapters = _adapters()

    def make():
        adapter = adapters.adapter_of_checkpoint(args.checkpoint)
        return adapter, adapters.adapter_file_bytes(adapter)

    adapter = _written(args.out, make)
    size, whole = os.path.getsize(args.out), os.path.getsize(args.checkpoint)
    print(f"{args.out}: {adapter.method} adapter, {adapter.trained_count():,} trained parameters, {size:,} bytes "
          f"({size / whole:.2%} of {args.checkpoint}, {whole:,} bytes)")
    return 0


def run_apply(args) -> int:
    import io

    import torch

    adapters = _adapters()

    def make():
        adapter = adapters.read_adapter_file(args.adapter)
        buffer = io.BytesIO()
        torch.save(adapters.checkpoint_with_backbone(adapter, args.adapter, args.backbone), buffer)
        return adapter, buffer.getvalue()

    adapter = _written(args.out, make)
    print(f"{args.out}: the {adapter.method} run on {args.backbone}; decode it with fairseq-generate "
          f"(--user-dir, as for training) or merge it with `fairseq-subnets export`")
    return 0


def run_info(args) -> int:
    adapter = _user_input(lambda: _adapters().read_adapter_file(args.adapter))
    summary = {"adapter": args.adapter, "method": adapter.method, "bytes": os.path.getsize(args.adapter),
               "trained_parameters": adapter.trained_count(), "options": json.loads(adapter.metadata["tuner"]),
               "backbone_sha256": adapter.metadata["backbone_sha256"]}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


def run_ranks(args) -> int:
    from ..core.targets import KINDS, parse_weight_name
    from ..core.tuners import tuner_ranks

    if args.plot and not args.plot.endswith(".png"):
        raise UserError(f"--plot {args.plot}: the heatmap is written as PNG; name a .png file")
    for path in filter(None, (args.csv_out, args.plot)):
        with writing(path):
            check_writable(path)
    ranks = _user_input(lambda: tuner_ranks(_adapters().tuned_state(args.source)))
    if not ranks:
        raise UserError(f"{args.source}: holds no rank-based tuner (lora, alpha_lora, adalora, s2lora)")
    by_cell = {parse_weight_name(name): rank for name, (_, rank) in ranks.items()}
    layers = sorted({layer for layer, _ in by_cell})
    rows = [[str(layer)] + [str(by_cell.get((layer, kind), "-")) for kind in KINDS] for layer in layers]
    methods = sorted({method for method, _ in ranks.values()})
    print(f"{args.source}: {', '.join(methods)}, {sum(by_cell.values())} ranks in use over {len(by_cell)} matrices")
    print("\n".join(" ".join(cell.rjust(5) for cell in row) for row in [["layer", *KINDS], *rows]))
    if args.csv_out:
        with writing(args.csv_out):
            write_atomically(args.csv_out, "".join(",".join(row) + "\n" for row in [["layer", *KINDS], *rows]).encode())
    if args.plot:
        from pathlib import Path

        from ..engine.report import Heatmap, write_plot

        plot = Path(args.plot)
        matrix = [[by_cell.get((layer, kind)) for kind in KINDS] for layer in layers]
        heatmap = Heatmap(plot.stem, f"{', '.join(methods)}: ranks in use", [str(layer) for layer in layers], matrix,
                          "rank", "matrix", column_labels=list(KINDS), row_axis_label="encoder layer", decimals=0)
        with writing(args.plot):
            write_plot(plot.parent, heatmap)
    return 0
