"""Grid files for tests: manifest folders (empty: nothing reads them before training), an untrained
tiny pretraining checkpoint, and a grid file naming both, for the grid check to accept or refuse."""
import textwrap
from pathlib import Path

from fairseq_subnets.methods.storey2025.spec import MANIFEST_FILES


def write_pretrained(path):
    """An untrained TINY wav2vec2 pretraining checkpoint (2 encoder layers)."""
    from factory import TINY
    from fairseq_subnets.plugin.untrained import CtcModelSize, save_untrained_pretraining_checkpoint

    save_untrained_pretraining_checkpoint(path, CtcModelSize(**TINY), normalize=False)
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
               downstream="languages: [es, ca]", pretrained="pretrained.pt"):
    """folder/grid.yaml on the inputs of write_grid_inputs. `upstream`, `prune` and `downstream`
    are the sections' lines (indented here); `extra` is appended as it is; `pretrained`: a file
    beside the corpus folder, or None for a grid that pretrains its own model."""
    lines = ["name: test", f"data: {corpus_dir}"]
    if pretrained is not None:
        lines.append(f"pretrained: {corpus_dir.parent / pretrained}")
    for section, content in (("upstream", upstream), ("prune", prune), ("downstream", downstream)):
        lines += [f"{section}:", textwrap.indent(content, "  ")]
    path = Path(folder) / "grid.yaml"
    path.write_text("\n".join(lines + [extra]))
    return path
