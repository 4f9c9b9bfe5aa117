"""Grid files for tests: manifest folders (empty: nothing reads them before training), an untrained
tiny pretraining checkpoint, and a grid file naming both, for the grid check to accept or refuse."""
import re
import textwrap
from pathlib import Path

from fairseq_subnets.engine.grid_file import MANIFEST_FILES


def write_pretrained(path, **architecture):
    """An untrained TINY wav2vec2 pretraining checkpoint (2 encoder layers); `architecture`: model
    keys replacing fairseq's defaults (e.g. narrower convolutions)."""
    from factory import TINY
    from fairseq_subnets.benchmarks.untrained import CtcModelSize, save_untrained_pretraining_checkpoint

    save_untrained_pretraining_checkpoint(path, CtcModelSize(**TINY), normalize=False, **architecture)
    return Path(path)


def write_grid_inputs(folder: Path, pretrained: Path, languages=("es", "ca")) -> Path:
    """folder/corpus/LANGUAGE/ manifest files and folder/pretrained.pt (a link to `pretrained`);
    returns the corpus folder."""
    for language in languages:
        for name in MANIFEST_FILES:
            path = folder / "corpus" / language / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    (folder / "pretrained.pt").symlink_to(pretrained)
    return folder / "corpus"


def write_grid(folder, corpus_dir, extra="", upstream="languages: [es, ca]", prune="sparsities: [0.0, 0.5]",
               downstream="languages: [es, ca]", pretrained="pretrained.pt", method="storey2025"):
    """folder/grid.yaml on the inputs of write_grid_inputs. `upstream`, `prune` and `downstream`
    are the sections' lines (indented here); `extra` is appended as it is, then `method:` (last,
    so that the other keys keep their lines; None: no method key); `pretrained`: a file beside the
    corpus folder, or None for a grid that pretrains its own model."""
    lines = ["name: test", f"data: {corpus_dir}"]
    if pretrained is not None:
        lines.append(f"pretrained: {corpus_dir.parent / pretrained}")
    for section, content in (("upstream", upstream), ("prune", prune), ("downstream", downstream)):
        lines += [f"{section}:", textwrap.indent(content, "  ")]
    path = Path(folder) / "grid.yaml"
    path.write_text("\n".join(lines + [extra] + ([f"method: {method}"] if method is not None else [])) + "\n")
    return path


def assert_refused_with_line_replaced(grid: Path, lines: str, message: str, capsys) -> None:
    """Each line of `lines` replaces the grid's line of the same top-level key (a key given twice
    would be refused for that alone); `fairseq-subnets grid --dry-run` must then exit 2 with a last
    stderr line naming the file, a line number and `message`."""
    import re

    from fairseq_subnets.cli.main import main as cli

    replaced = {line.split(":")[0] for line in lines.splitlines()}
    kept = [text for text in grid.read_text().splitlines() if text.split(":")[0] not in replaced]
    grid.write_text("\n".join(kept + lines.splitlines()) + "\n")
    assert cli(["grid", str(grid), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(rf"fairseq-subnets grid: error: {re.escape(str(grid))}:\d+: {re.escape(message)}", error), error


def example_grid_on(folder: Path, method: str, name: str = "grid.yaml") -> Path:
    """The shipped examples/METHOD/NAME, rewritten to read folder/corpus and folder/pretrained.pt
    instead of synthesizing its corpus and pretraining its model."""
    text = (Path(__file__).resolve().parents[1] / "examples" / method / name).read_text()
    text = re.sub(r"(?m)^(data|corpus): .*$", f"data: {folder / 'corpus'}", text)
    example = folder / "example.yaml"
    example.write_text(re.sub(r"(?m)^(pretrained|pretrain_updates): .*$", f"pretrained: {folder / 'pretrained.pt'}",
                              text))
    return example


def copy_shipped_configs(destination: Path) -> Path:
    """A copy of every yaml the package ships, laid out as in the package, with each entry config's
    `hydra.searchpath` pointing (file://) at the copy instead of the package: Hydra, and the cache
    key, then read only the copy. Returns the copy's config root (its finetune/ and pretrain/)."""
    from fairseq_subnets import USER_DIR

    package = Path(USER_DIR)
    for path in package.rglob("*.yaml"):
        copied = destination / path.relative_to(package)
        copied.parent.mkdir(parents=True, exist_ok=True)
        copied.write_text(re.sub(r"pkg://fairseq_subnets\.([\w.]+)",
                                 lambda found: f"file://{destination}/{found.group(1).replace('.', '/')}", path.read_text()))
    return destination / "config"


def run_method_grid(method, grid: Path, out_dir: Path, runner, **options):
    """Runs a method's grid file through the real engine, two cells at a time, quietly, its fairseq
    commands through `runner` (a test's stand-in); `options` go to the GridRun (config_root).
    Returns the GridRun (its cells and results)."""
    from fairseq_subnets.engine.executors import LocalExecutor

    run = method.GridRun(method.load_grid(grid), out_dir, LocalExecutor(2), say=lambda message: None, runner=runner,
                         **options)
    run.run()
    return run
