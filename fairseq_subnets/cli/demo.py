"""`fairseq-subnets demo`: the main job on built-in example data (what `make demo` runs).

The demo's settings and pipeline (synthesis, fairseq runs, the language-subnetwork slice) are
imported when the demo runs or its help is printed, never when the parser is built.
"""
import argparse
import dataclasses
from pathlib import Path

SETTINGS_OPTIONS = ("corpus", "language", "pretrain_updates", "finetune_updates", "finetune_lr", "seed", "jobs")
"""Options named as the SkeletonSettings fields they set; left out, the field keeps its default."""


class _HelpWithSettingsDefaults(argparse.HelpFormatter):
    """Appends each settings option's default, read from SkeletonSettings when the help is printed."""

    def _get_help_string(self, action):
        if action.dest not in SETTINGS_OPTIONS:
            return action.help
        from ..demo import SkeletonSettings

        defaults = {field.name: field.default for field in dataclasses.fields(SkeletonSettings)}
        return f"{action.help} (default: {defaults[action.dest]})"


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="synthesize speech, pretrain a tiny wav2vec2, fine-tune it with CTC, decode, print CER/WER",
        description="Runs the whole pipeline with stock fairseq-hydra-train and fairseq-generate on a "
        "synthesized corpus, then prunes the fine-tuned model to 50% and 90% and fine-tunes its "
        "subnetworks on the same and on an unseen language (about 20 minutes on 2 idle CPU cores). "
        "A rerun resumes.",
        formatter_class=_HelpWithSettingsDefaults,
    )
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output directory (default: %(default)s)")
    parser.add_argument("--corpus", help="corpus definition name or yaml path")
    parser.add_argument("--language", help="fine-tuning language")
    parser.add_argument("--pretrain-updates", type=int, help="pretraining updates")
    parser.add_argument("--finetune-updates", type=int, help="fine-tuning updates")
    parser.add_argument("--finetune-lr", type=float, help="fine-tuning learning rate")
    parser.add_argument("--seed", type=int, help="seed of synthesis and training")
    parser.add_argument("--jobs", type=int, help="synthesis processes")
    parser.add_argument("--skip-subnets", action="store_true",
                        help="stop after the fine-tuned model (no language-subnetwork slice)")
    parser.set_defaults(func=run)


def run(args):
    from ..demo import SkeletonSettings, run_skeleton
    from ..experiments.storey2025.cells import run_subnet_slice

    chosen = {name: getattr(args, name) for name in SETTINGS_OPTIONS if getattr(args, name) is not None}
    settings = SkeletonSettings(out_dir=args.out, **chosen)
    result = run_skeleton(settings)
    print()
    print(f"{'language':<10}{'test utterances':>16}{'CER %':>8}{'WER %':>8}")
    print(f"{settings.language:<10}{result.test_utterances:>16}{result.test_cer:>8.2f}{result.test_wer:>8.2f}")
    print(f"\nfine-tuned checkpoint: {result.finetuned_checkpoint}")
    print(f"summary: {Path(args.out).resolve() / 'summary.json'}")
    if args.skip_subnets:
        return 0
    print(f"\n[demo] language subnetworks of the {settings.language} model ...")
    rows = run_subnet_slice(settings, result)
    print_subnet_table(rows, settings.language)
    subnets_dir = Path(args.out).resolve() / "subnets"
    print(f"\nresults: {subnets_dir / 'results.csv'}; "
          f"plots and tables: fairseq-subnets report {subnets_dir} --out {subnets_dir / 'report'}")
    return 0


def print_subnet_table(rows, upstream):
    """Test CER of each downstream language by sparsity of the upstream model's own subnetwork."""
    from ..experiments.storey2025.cells import SLICE_SPARSITIES

    downstream = [row for row in rows if row["stage"] == "downstream" and row["source"] == "own"]
    languages = list(dict.fromkeys(row["downstream"] for row in downstream))
    cer = {(row["sparsity"], row["downstream"]): row["cer"] for row in downstream}
    print(f"\ntest CER % after downstream fine-tuning with the {upstream} subnetwork fixed")
    print(f"{'sparsity':<10}" + "".join(f"{language:>8}" for language in languages))
    for sparsity in SLICE_SPARSITIES:
        cells = [cer.get((sparsity, language)) for language in languages]
        print(f"{sparsity:<10}" + "".join(f"{c:>8.2f}" if c is not None else f"{'-':>8}" for c in cells))
