"""`fairseq-subnets adapters save | apply | export | ranks | info`: what a tuner run trained, as a small file.

An adapter file (plugin.formats.adapters) holds a `+model.tuner=...` run's tuner parameters and output
layer, with the method, the run's config, its dictionary and the fingerprint of the backbone it
was trained on. `apply` rebuilds the run's checkpoint from the file and a checkpoint holding that
backbone (the pretraining checkpoint, usually), refusing any other backbone. `export --format peft`
writes it as an HF PEFT adapter folder (fairseq_subnets.interop.peft, imported when it runs).
"""
import json
import os
import sys

from ..atomic import check_writable, write_atomically
from .main import UserError, writing


EXPORT_FORMATS = ("peft",)
"""What `adapters export --format` writes."""


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

    ranks = commands.add_parser("ranks", help="the rank each adapted matrix uses (the low-rank tuners)",
                                description="The rank in use of every adapted matrix, as a table of encoder layers "
                                "x q, k, v, out, fc1, fc2, for the tuners with a rank: AdaLoRA's kept triplets, "
                                "S2-LoRA's coefficients with |s| >= 1e-4, alpha-LoRA's r (0 while its scalar is 0), "
                                "the r of the others.")
    ranks.add_argument("source", metavar="FILE", help="an adapter file or a tuner run's checkpoint")
    ranks.add_argument("--csv-out", metavar="CSV",
                       help="also write the table as CSV to this file (layer, then one column per kind)")
    ranks.add_argument("--plot", metavar="PNG", help="also draw it as a heatmap (a .png file)")
    ranks.set_defaults(func=run_ranks)

    export = commands.add_parser("export", help="an adapter file as a PEFT adapter folder (LoRA, DoRA, IA3, VeRA, "
                                 "AdaLoRA, GLoRA)",
                                 description="Writes the folder that HF PEFT loads onto HF's wav2vec2: "
                                 "PeftModel.from_pretrained(Wav2Vec2ForCTC.from_pretrained(BASE), OUT), BASE being "
                                 "`export --format hf` of the backbone the run was trained on. Methods PEFT cannot "
                                 "hold exactly (S2-LoRA, alpha-LoRA, BitFit) are refused: export the merged model with "
                                 "`export --format hf` instead.")
    export.add_argument("adapter", metavar="FILE")
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="what OUT holds")
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write (new, or empty)")
    export.set_defaults(func=run_export)

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


def run_save(args) -> int:
    adapters = _adapters()
    with writing(args.out):
        check_writable(args.out)
    adapter = _user_input(lambda: adapters.adapter_of_checkpoint(args.checkpoint))
    with writing(args.out):
        _user_input(lambda: adapters.write_adapter_file(adapter, args.out))
    size, whole = os.path.getsize(args.out), os.path.getsize(args.checkpoint)
    print(f"{args.out}: {adapter.method} adapter, {adapter.trained_count():,} trained parameters, {size:,} bytes "
          f"({size / whole:.2%} of {args.checkpoint}, {whole:,} bytes)")
    return 0


UNCHECKED_LINE = ("{path}: a version 1 adapter file, which has no checksum: damage to its tensors cannot be "
                  "detected (`fairseq-subnets adapters save` of the run's checkpoint writes a version 2 file)")


def run_apply(args) -> int:
    adapters = _adapters()
    with writing(args.out):
        check_writable(args.out)
    adapter = _user_input(lambda: adapters.read_adapter_file(args.adapter))
    if not adapter.checksummed:
        print(UNCHECKED_LINE.format(path=args.adapter), file=sys.stderr)
    with writing(args.out):
        _user_input(lambda: adapters.apply_adapter(adapter, args.adapter, args.backbone, args.out))
    print(f"{args.out}: the {adapter.method} run on {args.backbone}; decode it with fairseq-generate "
          f"(--user-dir, as for training) or merge it with `fairseq-subnets export`")
    return 0


def run_export(args) -> int:
    from ..interop.peft import write_peft_folder

    adapter = _user_input(lambda: _adapters().read_adapter_file(args.adapter))
    if not adapter.checksummed:
        print(UNCHECKED_LINE.format(path=args.adapter), file=sys.stderr)
    with writing(args.out):
        config = _user_input(lambda: write_peft_folder(adapter, args.adapter, args.out))
    print(f"{args.out}: the {adapter.method} adapter as PEFT's {config['peft_type']} on "
          f"{len(config['target_modules'])} matrices, with its output layer; load it with "
          f"PeftModel.from_pretrained(Wav2Vec2ForCTC.from_pretrained(BASE), '{args.out}'), BASE being "
          "`fairseq-subnets export --format hf` of the backbone the run was trained on")
    return 0


def run_info(args) -> int:
    adapter = _user_input(lambda: _adapters().read_adapter_file(args.adapter))
    summary = {"adapter": args.adapter, "method": adapter.method, "bytes": os.path.getsize(args.adapter),
               "trained_parameters": adapter.trained_count(), "transforms": adapter.tuner_plan(),
               "options": {key: value for key, value in adapter.cfg["model"].items()
                           if key.startswith("tuner_") and value is not None},
               "backbone_sha256": adapter.metadata["backbone_sha256"],
               "checksum": "sha256 verified" if adapter.checksummed else UNCHECKED_LINE.format(path=args.adapter)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 0


def run_ranks(args) -> int:
    from ..core.targets import KINDS, parse_weight_name
    from ..techniques.tuners import rank_based_methods, tuner_ranks

    if args.plot and not args.plot.endswith(".png"):
        raise UserError(f"--plot {args.plot}: the heatmap is written as PNG; name a .png file")
    for path in filter(None, (args.csv_out, args.plot)):
        with writing(path):
            check_writable(path)
    ranks = _user_input(lambda: tuner_ranks(_adapters().tuned_state(args.source)))
    if not ranks:
        raise UserError(f"{args.source}: holds no rank-based tuner ({', '.join(rank_based_methods())})")
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
