"""What every grid on a corpus and one pretrained model plans, and the work its cells share.

`CorpusPlan` is the base of each experiment's plan: the `pretrain` cell unless the grid names a
pretrained checkpoint, the manifests of a language, the Hydra configs its cells train with (the
shipped ones, or a copy under another root), and a cell registry in dependency order.

Grids share what they have in common through the cache. Given a shared folder, the pretrain cell
lives there, in a folder named by the digest of its work (config, corpus, updates, seed): a grid
that pretrains alike plans the very same cell, finds it finished when another grid made it, and
makes it when none did; one that pretrains otherwise gets a folder of its own. GridRun places a
synthesized corpus there the same way (engine/grid_run.py). The work
functions here are the ones several experiments' cells run: pretraining, decoding a checkpoint,
pruning a checkpoint into a mask file.

Work functions are module-level and take plain values (functools.partial), so submitit can pickle
them for another process; they run fairseq through `context.runner` (engine/runners.py).
"""
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

from .. import USER_DIR
from ..runner import CONFIG_DIR, SINGLE_LANGUAGE_TASK
from .cells import Cell, CellContext, work_description
from .digests import value_digest
from .grid_file import MANIFEST_FILES, PRETRAIN_CONFIG_NAME
from .hydra_configs import HydraConfig

PRETRAIN_CELL = "pretrain"
SHARED_NAME_DIGITS = 12
"""Hex digits of the digest that names a shared folder: enough to tell settings apart."""


def shared_folder(shared_dir: Path, kind: str, identity) -> Path:
    """shared_dir/KIND-<digest of `identity`, a JSON value>: the one folder for that identity."""
    digest = value_digest(identity).split(":", 1)[1]
    return Path(shared_dir) / f"{kind}-{digest[:SHARED_NAME_DIGITS]}"


# ------------------------------------------------------------------------------------------- work


def decode(data_dir, checkpoint, context: CellContext, task_args=SINGLE_LANGUAGE_TASK) -> dict:
    """Test CER/WER of `checkpoint`; decoding output of an earlier, unfinished attempt is discarded."""
    results_dir = context.directory / "decode"
    if results_dir.exists():
        shutil.rmtree(results_dir)
    started = time.monotonic()
    decoded = context.runner.generate(data_dir, checkpoint, "test", results_dir, threads=context.threads,
                                      task_args=task_args)
    return {"cer": round(decoded.cer, 2), "wer": round(decoded.wer, 2), "test_utterances": decoded.hypotheses,
            "decode_seconds": round(time.monotonic() - started, 1)}


def pretrain_work(config: HydraConfig, corpus: Path, updates: int, seed: int, context: CellContext) -> dict:
    context.runner.hydra_train(config, [
        f"common.user_dir={USER_DIR}", f"task.data={corpus / 'pretrain'}", f"checkpoint.save_dir={context.directory}",
        f"optimization.max_update={updates}", f"common.seed={seed}",
    ], context.directory / "train.log", threads=context.threads, gpus=context.gpus)
    return {"checkpoint": str(context.directory / "checkpoint_last.pt")}


def mask_result(path: Path) -> dict:
    """A mask file's row fields: its path and its actual sparsity."""
    from ..core import stats
    from ..core.maskfile import load_mask_file

    return {"mask_path": str(path), "mask_sparsity": round(stats.sparsity(load_mask_file(str(path)).masks), 6)}


def prune_work(source_cell: Optional[str], pretrained: Path, file_name: str, method: str, sparsity: float,
               targets: str, layers: str, seed: int, context: CellContext) -> dict:
    """Prunes the checkpoint of `source_cell` (or the pretrained model when None) into a mask file."""
    from ..plugin.tools.prune import prune_checkpoint

    checkpoint = context.results[source_cell]["checkpoint"] if source_cell else pretrained
    path = context.directory / file_name
    prune_checkpoint(str(checkpoint), str(path), method, sparsity, targets, layers, seed=seed)
    return mask_result(path)


# ------------------------------------------------------------------------------------------ plan


class CorpusPlan:
    """The cells of a grid whose corpus is (or will be) at `corpus` and whose run folder is
    `out_dir`, in dependency order in `cells`; an experiment's plan adds its own to the `pretrain`
    cell planned here. `config_root` holds the `finetune/` and `pretrain/` Hydra configs (default:
    the shipped ones); `shared_dir`, where grids share their pretrain cell (default: none, the cell
    is in `out_dir`)."""

    def __init__(self, out_dir: Path, corpus: Path, pretrained: Optional[str], pretrain_updates: int, seed: int,
                 config_root: Optional[Path] = None, shared_dir: Optional[Path] = None):
        self.out_dir, self.corpus = Path(out_dir), Path(corpus)
        self.config_root = Path(config_root) if config_root is not None else CONFIG_DIR
        self.shared_dir = Path(shared_dir) if shared_dir is not None else None
        self.pretrain_dir = self.out_dir / PRETRAIN_CELL
        self.cells: Dict[str, Cell] = {}
        self.given_pretrained = pretrained
        self.pretrained_inputs, self.pretrained_after = self._pretrained(pretrain_updates, seed)

    def add(self, cell: Cell) -> str:
        self.cells.setdefault(cell.name, cell)
        return cell.name

    def manifests(self, language) -> List[Path]:
        return [self.corpus / language / name for name in MANIFEST_FILES]

    def finetune_config(self, name: str) -> HydraConfig:
        """A fine-tuning config (config/finetune/NAME.yaml under the config root)."""
        return HydraConfig(name, self.config_root / "finetune")

    @property
    def pretrained_path(self) -> Path:
        if self.given_pretrained is not None:
            return Path(self.given_pretrained).resolve()
        return self.pretrain_dir / "checkpoint_last.pt"

    def _pretrained(self, pretrain_updates: int, seed: int):
        """(inputs, after) of a cell that reads the pretrained checkpoint."""
        if self.given_pretrained is not None:
            return [self.pretrained_path], []
        config = HydraConfig(PRETRAIN_CONFIG_NAME, self.config_root / "pretrain")
        work = partial(pretrain_work, config, self.corpus, pretrain_updates, seed)
        if self.shared_dir is not None:
            self.pretrain_dir = shared_folder(self.shared_dir, PRETRAIN_CELL, work_description(work))
        inputs = [self.corpus / "pretrain" / f"{split}.tsv" for split in ("train", "valid")]
        return [], [self.add(Cell(PRETRAIN_CELL, self.pretrain_dir, work, inputs, shared=self.shared_dir is not None))]
