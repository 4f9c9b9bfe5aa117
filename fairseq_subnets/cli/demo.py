"""`fairseq-subnets demo`: the main job on built-in example data (what `make demo` runs)."""
from pathlib import Path

from ..pipeline import SkeletonSettings, run_skeleton


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="synthesize speech, pretrain a tiny wav2vec2, fine-tune it with CTC, decode, print CER/WER",
        description="Runs the whole pipeline with stock fairseq-hydra-train and fairseq-generate on a "
        "synthesized corpus (about 13 minutes on 2 CPU cores with the defaults). A rerun resumes.",
    )
    defaults = SkeletonSettings(out_dir=Path("demo_output"))
    parser.add_argument("--out", type=Path, default=defaults.out_dir, help="output directory (default: %(default)s)")
    parser.add_argument("--corpus", default=defaults.corpus, help="corpus definition name or yaml path (default: %(default)s)")
    parser.add_argument("--language", default=defaults.language, help="fine-tuning language (default: %(default)s)")
    parser.add_argument("--pretrain-updates", type=int, default=defaults.pretrain_updates, help="default: %(default)s")
    parser.add_argument("--finetune-updates", type=int, default=defaults.finetune_updates, help="default: %(default)s")
    parser.add_argument("--finetune-lr", type=float, default=defaults.finetune_lr, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="synthesis processes (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args):
    settings = SkeletonSettings(
        out_dir=args.out, corpus=args.corpus, language=args.language,
        pretrain_updates=args.pretrain_updates, finetune_updates=args.finetune_updates,
        finetune_lr=args.finetune_lr, seed=args.seed, jobs=args.jobs,
    )
    result = run_skeleton(settings)
    print()
    print(f"{'language':<10}{'test utterances':>16}{'CER %':>8}{'WER %':>8}")
    print(f"{settings.language:<10}{result.test_utterances:>16}{result.test_cer:>8.2f}{result.test_wer:>8.2f}")
    print(f"\nfine-tuned checkpoint: {result.finetuned_checkpoint}")
    print(f"summary: {Path(args.out).resolve() / 'summary.json'}")
    return 0
