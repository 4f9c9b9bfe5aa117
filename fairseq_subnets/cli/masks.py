"""`fairseq-subnets prune | masks ... | export`: finding, comparing and shipping masks.

Every `masks` subcommand prints a readable table by default, one JSON object with `--json`, and
CSV with `--csv` where the result is a table. Mask files are the compressed safetensors files of
`fairseq_subnets.core.maskfile`. The core (torch, numpy, safetensors) is imported by the command
functions only, so the parser is built without it.
"""
import csv
import json
import math
import os
import sys
from typing import Dict, List, Sequence

from ..atomic import cannot_write_message, check_writable
from .main import UserError, writing

PRUNING_METHODS = ("global-l1", "layer-l1", "block-l2", "global-block-l2", "random")
"""The choices of `prune --method`: core.pruning.METHODS, restated because the core imports torch
(tests/test_cli_parser.py holds the two equal)."""
GROUPINGS = ("total", "layer", "kind", "matrix")
"""The choices of `--by`: core.stats.GROUPINGS, restated for the same reason and held equal alike."""
METRICS = ("iou", "cosine")
"""The choices of `--metric`: core.stats.METRICS, restated and held equal alike."""


def register(subparsers):
    _register_prune(subparsers)
    _register_masks(subparsers)
    _register_export(subparsers)


# ----------------------------------------------------------------------------------------- output


def _add_format_options(parser, csv_too=True):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="print one JSON object")
    if csv_too:
        group.add_argument("--csv", action="store_true", help="print the table as CSV")


def _json_safe(value):
    """NaN (an undefined correlation) -> null, numpy scalars and arrays -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return _json_safe(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _print_json(payload) -> None:
    print(json.dumps(_json_safe(payload), indent=2, allow_nan=False))


def _cell(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]], args) -> None:
    if getattr(args, "csv", False):
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[_json_safe(value) for value in row] for row in rows])
        return
    cells = [list(header)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))))


# ------------------------------------------------------------------------------------ mask files


def _load(path: str):
    from ..core.maskfile import MaskFileError, load_mask_file

    try:
        return load_mask_file(path)
    except MaskFileError as error:
        raise UserError(str(error)) from None


def _load_all(paths: Sequence[str]) -> list:
    from ..core import stats

    files = [_load(path) for path in paths]
    try:
        stats.check_same_layout([f.masks for f in files], list(paths))
    except ValueError as error:
        raise UserError(str(error)) from None
    return files


def _labels(args) -> List[str]:
    if args.labels:
        labels = [label.strip() for label in args.labels.split(",")]
        if len(labels) != len(args.masks):
            raise UserError(f"--labels names {len(labels)} masks but {len(args.masks)} mask files are given")
    else:
        labels = [os.path.splitext(os.path.basename(path))[0] for path in args.masks]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UserError(f"mask label {duplicates[0]!r} is used twice; name the masks with --labels")
    return labels


def _summary(path: str, masks) -> Dict[str, object]:
    from ..core import stats

    kept, weights = stats.kept_counts(masks).get("total", (0, 0))
    return {"file": path, "matrices": len(masks), "weights": weights, "kept": kept,
            "sparsity": 1.0 - kept / weights if weights else 0.0}


def _report_written(path: str, masks, args) -> int:
    summary = _summary(path, masks)
    if args.json:
        _print_json(summary)
    else:
        print(f"wrote {path}: {summary['matrices']} matrices, {summary['weights']:,} weights, "
              f"{summary['kept']:,} kept, sparsity {summary['sparsity']:.4f}")
    return 0


# ----------------------------------------------------------------------------------------- prune


def _register_prune(subparsers):
    parser = subparsers.add_parser(
        "prune",
        help="compute a mask from a pretrained or fine-tuned wav2vec2 checkpoint and write a mask file",
        description="Ranks the selected encoder weights of CKPT (a pretrained wav2vec2 checkpoint or a "
        "fine-tuned CTC one; mask names are the same for both) and writes a compressed mask file. "
        "Exactly round(S * N) units are pruned (N: all selected weights for global-l1, each matrix's "
        "weights or blocks otherwise); equal scores are pruned in name/position order.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="fairseq checkpoint (.pt)")
    parser.add_argument("--method", choices=PRUNING_METHODS, required=True,
                        help="global-l1: |w| ranked over all selected matrices; layer-l1: per matrix; "
                        "block-l2: blocks ranked by L2 norm per matrix; global-block-l2: blocks ranked over all selected "
                        "matrices; random: seeded, per matrix")
    parser.add_argument("--sparsity", type=float, required=True, help="fraction of weights to prune, in [0, 1]")
    parser.add_argument("--targets", default="all",
                        help="module kinds: q,k,v,out,fc1,fc2 or attn, ffn, all (default: %(default)s)")
    parser.add_argument("--layers", default="all", help="encoder layers, e.g. 0-11 or 0,3,5 (default: %(default)s)")
    parser.add_argument("--block", default="8x1",
                        help="block-l2 and global-block-l2 block: INPUTSxROWS, 8x1 = 8 consecutive weights of a row (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random: seed (default: %(default)s)")
    parser.add_argument("--within", metavar="MASK",
                        help="prune further (iterative pruning): keep a subset of what MASK keeps, which must cover "
                        "the selected matrices; what it prunes counts towards --sparsity")
    parser.add_argument("--out", required=True, metavar="MASK", help="mask file to write")
    _add_format_options(parser, csv_too=False)
    parser.set_defaults(func=run_prune)


def run_prune(args) -> int:
    from ..plugin.tools.prune import PruneError, prune_checkpoint

    try:
        masks = prune_checkpoint(args.checkpoint, args.out, args.method, args.sparsity, args.targets,
                                 args.layers, args.block, args.seed, args.within)
    except PruneError as error:
        raise UserError(str(error)) from None
    return _report_written(args.out, masks, args)


# ----------------------------------------------------------------------------------------- masks


def _register_masks(subparsers):
    parser = subparsers.add_parser(
        "masks", help="statistics and algebra of mask files (stats, iou, union, ...)",
        description="Statistics and algebra of mask files. IOU is |a & b| / |a | b| over kept weights; "
        "the union ratio is |m1 | ... | mn| / weights; similarity is the cosine of masks as 0/1 vectors "
        "(or IOU).",
    )
    commands = parser.add_subparsers(dest="masks_command", metavar="SUBCOMMAND", required=True)
    by_help = "grouping: total, layer, kind (q,k,v,out,fc1,fc2) or matrix (default: %(default)s)"

    stats_parser = commands.add_parser("stats", help="sparsity of one mask file, per layer or module kind",
                                       description="Metadata and sparsity (total and per group) of a mask file.")
    stats_parser.add_argument("mask", metavar="MASK")
    stats_parser.add_argument("--by", choices=GROUPINGS, default="layer", help=by_help)
    _add_format_options(stats_parser)
    stats_parser.set_defaults(func=run_stats)

    iou_parser = commands.add_parser("iou", help="intersection over union of the kept weights of two masks",
                                     description="IOU = |a & b| / |a | b| over kept weights, total and per group.")
    iou_parser.add_argument("a", metavar="MASK_A")
    iou_parser.add_argument("b", metavar="MASK_B")
    iou_parser.add_argument("--by", choices=GROUPINGS, default="layer", help=by_help)
    _add_format_options(iou_parser)
    iou_parser.set_defaults(func=run_iou)

    for name, operation, help_text in (
        ("union", "union", "keep a weight kept by any input"),
        ("intersect", "intersection", "keep a weight kept by every input"),
    ):
        combine_parser = commands.add_parser(name, help=help_text, description=f"Writes a mask file: {help_text}.")
        combine_parser.add_argument("masks", nargs="+", metavar="MASK")
        combine_parser.add_argument("--out", required=True, metavar="OUT")
        _add_format_options(combine_parser, csv_too=False)
        combine_parser.set_defaults(func=run_combine, operation=operation)

    diff_parser = commands.add_parser("diff", help="keep what A keeps and B prunes",
                                      description="Writes a mask file keeping the weights MASK_A keeps and MASK_B prunes.")
    diff_parser.add_argument("masks", nargs=2, metavar="MASK")
    diff_parser.add_argument("--out", required=True, metavar="OUT")
    _add_format_options(diff_parser, csv_too=False)
    diff_parser.set_defaults(func=run_combine, operation="difference")

    complement_parser = commands.add_parser("complement", help="swap kept and pruned weights",
                                            description="Writes a mask file with kept and pruned swapped (same weights).")
    complement_parser.add_argument("masks", nargs=1, metavar="MASK")
    complement_parser.add_argument("--out", required=True, metavar="OUT")
    _add_format_options(complement_parser, csv_too=False)
    complement_parser.set_defaults(func=run_combine, operation="complement")

    extract_parser = commands.add_parser(
        "extract", help="write the masks a checkpoint holds (learned scores binarised) as a mask file",
        description="Writes the masks a fine-tuned checkpoint holds as a mask file: learned scores (S3-Router) "
        "binarised exactly as training and decoding binarise them, fixed masks, or one language's per-language "
        "masks; several masks on one weight are combined. The mask tools and +model.mask_path then apply.")
    extract_parser.add_argument("checkpoint", metavar="CKPT", help="fairseq checkpoint (.pt)")
    extract_parser.add_argument("--language", help="the language whose masks to take, for per-language masks")
    extract_parser.add_argument("--out", required=True, metavar="MASK", help="mask file to write")
    _add_format_options(extract_parser, csv_too=False)
    extract_parser.set_defaults(func=run_extract)

    ratio_parser = commands.add_parser("ratio", help="union ratio |m1 | ... | mn| / weights of several masks",
                                       description="Union ratio UR = |m1 | ... | mn| / number of weights (Yang Eq. 3).")
    ratio_parser.add_argument("masks", nargs="+", metavar="MASK")
    _add_format_options(ratio_parser, csv_too=False)
    ratio_parser.set_defaults(func=run_ratio)

    for name, function, help_text, description in (
        ("similarity", run_similarity, "pairwise similarity of N masks, per layer or module kind",
         "Pairwise similarity of N masks (cosine of 0/1 vectors, or IOU), per group: e.g. the per-layer "
         "cosine similarity of language masks (S3-Router analysis)."),
        ("correlate", run_correlate, "correlate the masks' pairwise similarity with a user matrix (CSV)",
         "Pearson and Spearman correlation between the masks' pairwise similarity matrix and a user matrix "
         "(CSV: first row ',label1,label2,...', then 'label,v1,v2,...'), over the pairs above the diagonal, "
         "per group."),
    ):
        pair_parser = commands.add_parser(name, help=help_text, description=description)
        pair_parser.add_argument("masks", nargs="+", metavar="MASK")
        pair_parser.add_argument("--labels", help="comma-separated names of the masks (default: file names without extension)")
        pair_parser.add_argument("--metric", choices=METRICS, default="cosine", help="default: %(default)s")
        pair_parser.add_argument("--by", choices=GROUPINGS, default="layer", help=by_help)
        if name == "correlate":
            pair_parser.add_argument("--matrix", required=True, metavar="CSV", help="labelled square matrix to correlate with")
        _add_format_options(pair_parser)
        pair_parser.set_defaults(func=function)


def run_stats(args) -> int:
    from ..core import stats

    mask_file = _load(args.mask)
    counts = stats.kept_counts(mask_file.masks, args.by)
    groups = {group: {"weights": n, "kept": k, "sparsity": 1 - k / n if n else 0.0} for group, (k, n) in counts.items()}
    if args.json:
        _print_json({**_summary(args.mask, mask_file.masks), "metadata": mask_file.metadata, "by": args.by,
                     "groups": groups})
        return 0
    if not args.csv:
        shown = {k: v for k, v in mask_file.metadata.items() if k not in ("shapes", "sha256", "format") and v != ""}
        print(f"{args.mask}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    rows = [[group, g["weights"], g["kept"], g["sparsity"]] for group, g in groups.items()]
    _print_table([args.by, "weights", "kept", "sparsity"], rows, args)
    return 0


def run_iou(args) -> int:
    from ..core import stats

    a, b = _load_all([args.a, args.b])
    groups = stats.compare_by(a.masks, b.masks, "iou", args.by)
    if args.json:
        _print_json({"a": args.a, "b": args.b, "iou": groups["total"], "by": args.by, "groups": groups})
        return 0
    _print_table([args.by, "iou"], [[group, value] for group, value in groups.items()], args)
    return 0


def run_combine(args) -> int:
    from ..core import stats
    from ..core.maskfile import save_mask_file

    with writing(args.out):
        check_writable(args.out)
    files = _load_all(args.masks)
    masks = [f.masks for f in files]
    if args.operation == "complement":
        result = stats.complement(masks[0])
    elif args.operation == "difference":
        result = stats.difference(masks[0], masks[1])
    else:
        result = getattr(stats, args.operation)(*masks)
    inputs = [{"file": os.path.basename(f.path), "sha256": f.metadata.get("sha256", "")} for f in files]
    source = files[0].metadata
    metadata = {"method": args.operation, "inputs": json.dumps(inputs),
                "targets": source.get("targets", ""), "layers": source.get("layers", ""),
                "sparsity": stats.sparsity(result)}
    with writing(args.out):
        save_mask_file(args.out, result, metadata)
    return _report_written(args.out, result, args)


def run_extract(args) -> int:
    from ..plugin.tools.prune import PruneError, extract_checkpoint_masks

    try:
        masks = extract_checkpoint_masks(args.checkpoint, args.out, args.language)
    except PruneError as error:
        raise UserError(str(error)) from None
    return _report_written(args.out, masks, args)


def run_ratio(args) -> int:
    from ..core import stats

    files = _load_all(args.masks)
    ratio = stats.union_ratio([f.masks for f in files])
    if args.json:
        _print_json({"masks": list(args.masks), "union_ratio": ratio})
    else:
        print(f"union ratio of {len(files)} masks: {ratio:.4f}")
    return 0


def _pairwise(args):
    from ..core import stats

    labels = _labels(args)
    if len(args.masks) < 2:
        raise UserError("give at least two mask files")
    files = _load_all(args.masks)
    return labels, stats.pairwise([f.masks for f in files], args.metric, args.by)


def run_similarity(args) -> int:
    labels, matrices = _pairwise(args)
    if args.json:
        _print_json({"metric": args.metric, "by": args.by, "labels": labels, "matrices": matrices})
        return 0
    rows = [[group, labels[i], labels[j], float(matrix[i, j])]
            for group, matrix in matrices.items() for i in range(len(labels)) for j in range(i + 1, len(labels))]
    _print_table([args.by, "mask_a", "mask_b", args.metric], rows, args)
    return 0


def run_correlate(args) -> int:
    from ..core import stats

    labels, matrices = _pairwise(args)
    try:
        results = stats.correlate_with_file(matrices, labels, args.matrix)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.json:
        total = results["total"]
        _print_json({"metric": args.metric, "by": args.by, "labels": labels, "matrix_file": args.matrix,
                     "pearson": total["pearson"], "spearman": total["spearman"], "groups": results})
        return 0
    rows = [[group, r["pearson"], r["spearman"], r["pairs"]] for group, r in results.items()]
    _print_table([args.by, "pearson", "spearman", "pairs"], rows, args)
    return 0


# ---------------------------------------------------------------------------------------- export


def _register_export(subparsers):
    parser = subparsers.add_parser(
        "export", help="write a plain checkpoint (masks baked into the weights) that stock fairseq loads, "
        "or an HF transformers folder",
        description="Bakes every mask a checkpoint holds (and optionally the masks of --mask) into plain "
        "weights, maps plugin components to the stock ones and drops training-only state; the result "
        "loads in stock fairseq without the plugin and has the stock model's inference cost. With "
        "--format hf the same model becomes an HF transformers folder (Wav2Vec2ForCTC and its processor, "
        "or the pretraining model) instead.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="fairseq checkpoint (.pt)")
    parser.add_argument("--mask", metavar="MASK", help="also apply this mask file before exporting")
    parser.add_argument("--language", metavar="LANG", help="of a multilingual checkpoint: export this language "
                        "(its output layer and per-language masks) as a single-language model")
    parser.add_argument("--format", choices=("fairseq", "hf"), default="fairseq",
                        help="fairseq: a stock checkpoint (default); hf: an HF transformers folder")
    parser.add_argument("--compact", action="store_true",
                        help="with --format fairseq: store each masked encoder matrix as its entropy-coded mask and "
                        "kept float32 values (a fraction of the size at high sparsity); decoded by fairseq-generate "
                        "with the plugin, straight into its sparse path (docs/deploying.md, Compact checkpoint)")
    parser.add_argument("--dictionary", metavar="DICT", help="with --format hf, for a CTC checkpoint that holds no "
                        "dictionary (a stock export): the dict.ltr.txt it was trained with")
    parser.add_argument("--out", required=True, metavar="OUT", help="checkpoint (fairseq) or new folder (hf) to write")
    parser.set_defaults(func=run_export)


def run_export(args) -> int:
    if args.format == "hf":
        if args.compact:
            raise UserError("--compact writes a fairseq checkpoint for the plugin's sparse path: it needs --format "
                            "fairseq (an HF folder holds dense weights)")
        from .interop import run_hf_export

        return run_hf_export(args)
    if args.dictionary is not None:
        raise UserError("--dictionary names the vocabulary of an HF folder: it needs --format hf")
    from ..core.maskfile import MaskFileError
    from ..plugin.formats.checkpoints import CheckpointLoadError
    from ..plugin.tools.export import export_plain_checkpoint

    try:
        export_plain_checkpoint(args.checkpoint, args.out, mask_path=args.mask, language=args.language,
                                compact=args.compact)
    except (CheckpointLoadError, MaskFileError) as error:
        raise UserError(str(error)) from None
    except ValueError as error:
        raise UserError(f"{args.checkpoint}: {error}") from None
    except OSError as error:
        raise UserError(cannot_write_message(args.out, error)) from None
    print(f"wrote {args.out}")
    return 0
