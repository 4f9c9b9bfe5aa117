"""`fairseq-subnets report RESULTS --out DIR`: the tables and figures of a grid run, drawn by the
views of the method that wrote it: --method, else the `method` of the results.json or grid.yaml beside
the table; where none names it, the command asks for --method instead of guessing.

The work is in the method's `write_report` (imported when the command runs, so building the parser
for other commands does not load matplotlib).
"""
from pathlib import Path

from .main import UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "report",
        help="tables (Markdown, CSV) and figures (PNG) of a grid's results, plus report.md",
        description="Reads a grid's results.csv (and the method's other results files beside it, when present) "
        "and writes into DIR the views of the method that wrote it (--method, else the `method` of the results.json "
        "or grid.yaml beside it; where nothing names it, the command asks for --method). storey2025 (Storey et al. 2025): CER per upstream subnetwork, sparsity and "
        "downstream language with one CER-vs-sparsity plot per upstream model, mean CER per subnetwork and per "
        "downstream language over the non-matching languages, exchanged, union and control masks, the upstream "
        "models, and IOU heatmaps. fu2022 (Fu et al. 2022): CER of S3-Router against weight fine-tuning by "
        "sparsity, score initialisations, masked modules, S3-Router-P against global L1, bundle storage, mask "
        "similarity heatmaps and its scatter against the language similarities. liu2023 (Liu et al. 2023): "
        "trainable parameters and in- and out-of-domain CER of full fine-tuning and each tuner (Table 2), and "
        "the rank maps (Fig. 3). yang2023 (Yang et al. 2023): CER of the dense, pruned and pathway models with "
        "and without group lasso (Tables 1 and 2), mask overlaps (Fig. 3) and sparsity per layer. report.md "
        "shows them all. Cells without a CER are shown as missing, never as zero; views without data are "
        "skipped and named in report.md.",
    )
    parser.add_argument("results", metavar="RESULTS", type=Path,
                        help="a grid output folder holding results.csv, or the path of a results.csv")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (created if needed)")
    parser.add_argument("--method", metavar="METHOD",
                        help="the method that wrote RESULTS, where no results.json or grid.yaml beside it names it")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..engine.report import ResultsError
    from ..experiments import MethodError, method_of_results

    try:
        written = method_of_results(args.results, args.method).write_report(args.results, args.out)
    except (ResultsError, MethodError) as error:
        raise UserError(str(error)) from None
    except OSError as error:
        raise UserError(f"{error.filename or args.out}: {error.strerror}") from None
    for path in written:
        print(path)
    return 0
