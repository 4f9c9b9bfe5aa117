"""`fairseq-subnets import` and `export --format hf`: models to and from HF transformers folders.

The conversion is fairseq_subnets.interop.hf (which needs the optional transformers: `pip install
'fairseq_subnets[hf]'`); it is imported by the command functions only, so building the parser
imports neither it nor transformers.
"""
from ..atomic import cannot_write_message
from .main import UserError

FORMATS = ("hf",)
"""What `import --format` reads (`export --format` also writes the default, a stock checkpoint)."""


def register(subparsers):
    parser = subparsers.add_parser(
        "import", help="write a fairseq checkpoint from an HF transformers wav2vec2 folder",
        description="Reads an HF folder (Wav2Vec2ForCTC, Wav2Vec2ForPreTraining or Wav2Vec2Model; weights in "
        "model.safetensors, feature extractor settings beside them) and writes a fairseq checkpoint with the "
        "same weights: a pretraining model for model.w2v_path, or a CTC model for model.init_from and "
        "fairseq-generate, with its vocabulary in the checkpoint and in a dict.ltr.txt beside it.",
    )
    parser.add_argument("folder", metavar="DIR", help="HF model folder (as save_pretrained writes it)")
    parser.add_argument("out", metavar="OUT_CKPT", help="fairseq checkpoint to write (.pt)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="what DIR holds")
    parser.set_defaults(func=run_import)


def run_import(args) -> int:
    from ..interop.hf import import_hf_folder

    return _converted(lambda: import_hf_folder(args.folder, args.out), args.out, what=args.folder)


def run_hf_export(args) -> int:
    """`export --format hf`: the folder --out of the checkpoint, as the stock export would bake it."""
    from ..interop.hf import export_hf_folder

    return _converted(lambda: export_hf_folder(args.checkpoint, args.out, mask_path=args.mask, language=args.language,
                                               dictionary_path=args.dictionary), args.out, what=args.checkpoint)


def _converted(convert, out, what) -> int:
    """Runs `convert` (which returns notes on what it left out or filled in), prints the notes and
    what it wrote; every input error becomes one line (the errors' messages name their file, but
    a stray ValueError gets `what` in front)."""
    from ..core.maskfile import MaskFileError
    from ..errors import PluginInputError
    from ..plugin.formats.checkpoints import CheckpointLoadError

    try:
        notes = convert()
    except (PluginInputError, CheckpointLoadError, MaskFileError) as error:
        raise UserError(str(error)) from None
    except ValueError as error:
        raise UserError(f"{what}: {error}") from None
    except OSError as error:
        raise UserError(cannot_write_message(out, error)) from None
    for note in notes:
        print(note)
    print(f"wrote {out}")
    return 0
