"""`fairseq-subnets bundles build | add | remove | list`: one frozen backbone, many languages.

A bundle (plugin.formats.bundles) holds the backbone once and, per language, the learned masks (an
entropy-coded mask file), the output layer and the dictionary of a single-language learned-mask run
(`+model.score_sparsity`). Stock fairseq-generate decodes any of its languages by name:

    fairseq-generate DATA --user-dir USER_DIR --task subnets_multilingual_finetuning \\
        --languages es,ca,ast --decode-language ca --path BUNDLE --labels ltr ...

with DATA holding one manifest folder per language, as for multilingual runs.
"""
import json
import sys

from ..atomic import cannot_write_message, check_writable
from .main import UserError, writing

DECODE_HINT = ("decode a language with: fairseq-generate DATA --task subnets_multilingual_finetuning "
               "--languages {languages} --decode-language LANGUAGE --path {path} --labels ltr ...")


def register(subparsers):
    parser = subparsers.add_parser(
        "bundles", help="one frozen backbone with many languages' learned masks and output layers",
        description="Builds and changes bundles: one frozen backbone plus, per language, the learned masks, "
        "output layer and dictionary of a single-language learned-mask run. Every run must share the "
        "backbone bit for bit. Stock fairseq-generate decodes any language of a bundle (task "
        "subnets_multilingual_finetuning, --decode-language).")
    commands = parser.add_subparsers(dest="bundles_command", metavar="SUBCOMMAND", required=True)

    build = commands.add_parser("build", help="a bundle from single-language learned-mask checkpoints")
    build.add_argument("sources", nargs="+", metavar="LANGUAGE=CKPT")
    build.add_argument("--out", required=True, metavar="BUNDLE", help="bundle file to write")
    build.set_defaults(func=run_build)

    add = commands.add_parser("add", help="add languages to a bundle (rewritten in place, atomically)")
    add.add_argument("bundle", metavar="BUNDLE")
    add.add_argument("sources", nargs="+", metavar="LANGUAGE=CKPT")
    add.set_defaults(func=run_add)

    remove = commands.add_parser("remove", help="remove languages from a bundle (rewritten in place, atomically)")
    remove.add_argument("bundle", metavar="BUNDLE")
    remove.add_argument("languages", nargs="+", metavar="LANGUAGE")
    remove.set_defaults(func=run_remove)

    listing = commands.add_parser("list", help="the languages of a bundle and the storage each one costs")
    listing.add_argument("bundle", metavar="BUNDLE")
    listing.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    listing.set_defaults(func=run_list)


def _bundles():
    """plugin.formats.bundles, imported when a bundle command runs (it imports fairseq)."""
    from ..plugin.formats import bundles

    return bundles


def _saved(path, make):
    """Writes the bundle `make()` returns to `path` atomically (checked writable first); returns it."""
    bundles = _bundles()
    with writing(path):
        check_writable(path)
    try:
        bundle = make()
        bundles.write_bundle(bundle, path)
    except ValueError as error:  # BundleError, CheckpointLoadError
        raise UserError(str(error)) from None
    except OSError as error:
        raise UserError(cannot_write_message(path, error)) from None
    return bundle


UNCHECKED_LINE = ("{path}: a version 1 bundle, which has no checksum: damage to its backbone or output layers "
                  "cannot be detected (`bundles add` or `remove` rewrites it as version 2)")


def _read(path):
    """The bundle at `path`, with one line on stderr when it has no checksum to verify."""
    bundle = _bundles().read_bundle(path)
    if not bundle.checksummed:
        print(UNCHECKED_LINE.format(path=path), file=sys.stderr)
    return bundle


def _changed(path, change):
    """Reads the bundle at `path`, applies `change(bundle)`, writes it back atomically."""
    def changed():
        bundle = _read(path)
        change(bundle)
        return bundle

    return _saved(path, changed)


def run_build(args) -> int:
    bundles = _bundles()
    _print_listing(_saved(args.out, lambda: bundles.build_bundle(bundles.parse_language_sources(args.sources))),
                   args.out)
    return 0


def run_add(args) -> int:
    bundles = _bundles()
    _print_listing(_changed(args.bundle, lambda bundle: bundles.add_languages(
        bundle, bundles.parse_language_sources(args.sources))), args.bundle)
    return 0


def run_remove(args) -> int:
    bundles = _bundles()
    _print_listing(_changed(args.bundle, lambda bundle: bundles.remove_languages(bundle, args.languages, args.bundle)),
                   args.bundle)
    return 0


def run_list(args) -> int:
    bundles = _bundles()
    try:
        bundle = _read(args.bundle)
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.json:
        print(json.dumps({"bundle": args.bundle, "backbone_bytes": bundle.backbone_bytes(),
                          "masked_weights": len(bundle.masked_weights()),
                          "languages": [vars(row) for row in bundles.storage(bundle)]}, indent=2))
        return 0
    _print_listing(bundle, args.bundle)
    return 0


def _print_listing(bundle, path):
    rows = _bundles().storage(bundle)
    print(f"{path}: backbone {bundle.backbone_bytes():,} bytes, {len(rows)} languages, "
          f"masks on {len(bundle.masked_weights())} matrices")
    print(f"{'language':<10} {'mask bytes':>12} {'head bytes':>12} {'of backbone':>12}  source")
    for row in rows:
        print(f"{row.language:<10} {row.mask_bytes:>12,} {row.head_bytes:>12,} {row.backbone_fraction:>11.2%}  "
              f"{row.source}")
    print(DECODE_HINT.format(languages=",".join(row.language for row in rows), path=path))
