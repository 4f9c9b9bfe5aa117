"""`fairseq-subnets data synth|manifest|check`: make, convert and check speech corpora.

The `fairseq_subnets.data` modules are imported inside the handlers, so building the parser
(`fairseq-subnets --help`, `data --help`) does not pay for numpy, scipy and soundfile.
"""
import argparse
import functools
import json
import sys
import time

from .main import QUIET_HELP, UserError


def _comma_list(value):
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _split_assignment(value):
    split, separator, path = value.partition("=")
    if not separator or not split or not path:
        raise argparse.ArgumentTypeError(f"expected SPLIT=TRANSCRIPT_FILE, got {value!r}")
    return split, path


def _positive(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _data_errors_are_user_errors(handler):
    @functools.wraps(handler)
    def wrapper(args):
        from fairseq_subnets.data.errors import DataError
        try:
            return handler(args)
        except DataError as error:
            raise UserError(str(error)) from error
    return wrapper


@_data_errors_are_user_errors
def run_synth(args):
    from fairseq_subnets.data.synth import synthesize_corpus

    started = time.monotonic()
    try:
        out_dir = synthesize_corpus(args.corpus, args.out, seed=args.seed, jobs=args.jobs, languages=args.languages,
                                    progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: every file written so far is complete; run the same command again to resume",
              file=sys.stderr)
        return 130
    summary = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
    print(f"wrote {out_dir}: {summary['total_utterances']} utterances, {summary['total_hours']:.2f} h, "
          f"in {time.monotonic() - started:.1f} s")
    for language, splits in summary["splits"].items():
        counts = ", ".join(f"{split} {numbers['utterances']} ({numbers['sentences']} sentences)"
                           for split, numbers in splits.items())
        print(f"  {language}: {counts}")
    for split, numbers in summary["pretrain"].items():
        mix = ", ".join(f"{language} {count}" for language, count in numbers["utterances_by_language"].items())
        print(f"  pretrain {split}: {numbers['utterances']} utterances ({mix})")
    return 0


@_data_errors_are_user_errors
def run_manifest(args):
    from fairseq_subnets.data.convert import convert_corpus, parse_alphabet

    if args.format == "folder":
        if args.splits:
            raise UserError("--splits is for fleurs, commonvoice and mls; the folder format uses --transcripts")
        if not args.transcripts:
            raise UserError("the folder format needs --transcripts SPLIT=FILE (once per split)")
    elif args.transcripts:
        raise UserError("--transcripts is only for the folder format")
    reports = convert_corpus(
        args.format, args.source, args.out, splits=args.splits, transcripts=dict(args.transcripts or []),
        lowercase=args.lowercase, strip_punctuation=args.strip_punctuation,
        alphabet=parse_alphabet(args.alphabet) if args.alphabet else None, on_unknown=args.on_unknown_char,
        write_dictionary=args.dictionary, jobs=args.jobs, progress=not args.quiet)
    print(f"wrote {args.out}")
    for report in reports:
        print(report.describe())
    return 0


@_data_errors_are_user_errors
def run_check(args):
    from fairseq_subnets.data.check import check_manifests

    splits = [split for group in args.split for split in group] if args.split else None
    summary = check_manifests(args.manifest_dir, splits, sample_rate=args.sample_rate)
    for problem in summary.problems:
        print(problem)
    print(f"checked {args.manifest_dir} (splits: {', '.join(summary.splits) or 'none'}): {summary.utterances} "
          f"utterances, {summary.hours:.2f} h; {len(summary.problems)} problems")
    return 1 if summary.problems else 0


def register(subparsers):
    data = subparsers.add_parser(
        "data", help="build, convert and check speech corpora as fairseq manifests",
        description="Build a synthetic multilingual corpus offline, convert real corpora to fairseq manifests, "
                    "and check manifest folders before training.")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    synth = commands.add_parser(
        "synth", help="synthesize a spoken corpus with espeak-ng from Django's translation catalogues",
        description="Synthesize the corpus a definition describes: OUT/audio/<lang>/*.wav, OUT/<lang>/"
                    "{train,valid,test}.{tsv,ltr,wrd} + dict.ltr.txt, OUT/pretrain/{train,valid}.tsv, OUT/corpus.json. "
                    "Same seed, same bytes; an interrupted run resumes where it stopped.")
    synth.add_argument("--corpus", default="demo", metavar="NAME_OR_YAML",
                       help="a shipped definition name (demo, full) or a yaml file (default: demo)")
    synth.add_argument("--out", metavar="DIR", help="output folder (default: manifests/built/<corpus name>)")
    synth.add_argument("--seed", type=int, help="synthesis seed (voices, speed, pitch); default: the definition's. "
                                                "The sentence split keeps the definition's split_seed")
    synth.add_argument("--jobs", type=_positive, default=2, help="parallel espeak-ng processes (default: 2)")
    synth.add_argument("--languages", type=_comma_list, metavar="en,es",
                       help="only these languages of the definition (default: all)")
    synth.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    synth.set_defaults(func=run_synth)

    manifest = commands.add_parser(
        "manifest", help="write fairseq manifests for FLEURS, Common Voice, MLS or a folder of audio",
        description="Convert a corpus in its distributed layout to a fairseq manifest set in OUT "
                    "({split}.tsv/.ltr/.wrd, dict.ltr.txt). 16 kHz mono wav/flac is used in place; other audio "
                    "(e.g. Common Voice mp3) is resampled into OUT/audio. The dev split is written as valid.")
    manifest.add_argument("format", choices=("fleurs", "commonvoice", "mls", "folder"), help="source layout")
    manifest.add_argument("source", metavar="SOURCE",
                          help="fleurs: the language folder with train.tsv and audio/; commonvoice: the locale folder "
                               "with train.tsv and clips/; mls: the folder with train/ dev/ test/; "
                               "folder: the audio folder")
    manifest.add_argument("--out", required=True, metavar="DIR", help="output manifest folder")
    manifest.add_argument("--splits", type=_comma_list, metavar="train,dev,test",
                          help="source splits to convert (default: train,dev,test)")
    manifest.add_argument("--transcripts", type=_split_assignment, action="append", metavar="SPLIT=FILE",
                          help="folder format: a transcript file of 'utt_id<TAB>text' or 'path<TAB>text' lines for "
                               "one output split; repeat per split")
    manifest.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                          help="lower-case transcripts (default: on)")
    manifest.add_argument("--strip-punctuation", action=argparse.BooleanOptionalAction, default=True,
                          help="replace punctuation by spaces, keeping in-word apostrophes and ·  (default: on)")
    manifest.add_argument("--alphabet", metavar="CHARS_OR_DICT",
                          help="allowed characters: a string such as \"abcdefghijklmnopqrstuvwxyzáéíóúñü'\" "
                               "or a dict.ltr.txt file (space is always allowed)")
    manifest.add_argument("--on-unknown-char", choices=("drop", "error"), default="drop",
                          help="an utterance with a character outside --alphabet is dropped and counted (drop, "
                               "default) or stops the conversion with every offending file:line (error)")
    manifest.add_argument("--no-dict", dest="dictionary", action="store_false",
                          help="do not write dict.ltr.txt (e.g. when converting only a test set)")
    manifest.add_argument("--jobs", type=_positive, default=2, help="parallel audio conversions (default: 2)")
    manifest.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    manifest.set_defaults(func=run_manifest)

    check = commands.add_parser(
        "check", help="check a manifest folder before training",
        description="Report, with file and line, missing or unreadable audio, wrong sample rate or channel count, "
                    "sample counts that disagree with the tsv, label files whose line count differs from the tsv, "
                    "empty transcripts and characters missing from dict.ltr.txt. Exit status 1 if anything is wrong.")
    check.add_argument("manifest_dir", metavar="MANIFEST_DIR")
    check.add_argument("--split", type=_comma_list, action="append", metavar="S",
                       help="split(s) to check, e.g. train or train,valid (default: every *.tsv)")
    check.add_argument("--sample-rate", type=int, default=16000, help="expected sample rate (default: 16000)")
    check.set_defaults(func=run_check)
