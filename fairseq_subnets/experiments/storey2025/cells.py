"""The cells of a Storey et al. (2025) grid and the work each one does.

(1) `pretrain`: a tiny wav2vec2 pretrained with stock fairseq-hydra-train (the engine's cell), unless
the grid names a pretrained checkpoint; (2) `upstream-LANG-seedS`: CTC fine-tuning per upstream language (best
checkpoint by validation loss), or only decoding an already fine-tuned checkpoint the grid names;
(3) `mask-LABEL-sS`: each upstream model, the pretrained one (`base`) and random baselines pruned to
a mask file, and unions of two language masks; (4) `iou`: overlap of the upstream and base masks;
(5) one downstream cell per (upstream, downstream, sparsity, mask source, seed): `model.init_from`
the upstream model with its mask fixed, then decoded with fairseq-generate.

What enters each cache key (engine/cells.py): the arguments bound to the cell's work (the
grid-file keys it reads, as overrides and values), the config files it trains with, the manifests it
trains or decodes on and any checkpoint named in the grid file (by content), a mask file it applies
(by content), and the keys of the cells it builds on. So changing `prune.method` rebuilds every
mask and the downstream cells using them, but not the upstream models; changing `upstream.lr`
rebuilds that language's models, masks and everything downstream of them.

Work functions are module-level and take plain values (functools.partial), so submitit can pickle
them for another process; they run fairseq through `context.runner`. Pretraining, decoding and
pruning are the engine's shared work (engine/grid_plan.py).
"""
import itertools
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

from ... import USER_DIR
from ...engine.cells import Cell, CellContext
from ...engine.grid_plan import CorpusPlan, decode, mask_result, prune_work
from ...engine.grid_run import GridRun as EngineGridRun
from ...engine.hydra_configs import HydraConfig
from .spec import (
    METHOD, DownstreamCell, DownstreamSpec, GridSpec, PruneSpec, UpstreamSpec, plan_cells, sparsity_label, validate,
)

REPORTED_COLUMNS = ("cell", "stage", "upstream", "downstream", "sparsity", "source", "mask_language", "seed", "cer",
                    "wer", "mask_sparsity")
"""The columns of results.csv the views read (views.py)."""
RESULT_COLUMNS = (*REPORTED_COLUMNS, "test_utterances", "updates", "checkpoint", "mask_path", "train_seconds",
                  "decode_seconds")
IOU_COLUMNS = ("sparsity", "a", "b", "iou")
IOU_FILE = "iou.csv"
"""IOU between the upstream subnetworks and the base model's at each sparsity."""
IOU_CELL = "iou"
FINETUNE_CONFIG = "tiny"


# ------------------------------------------------------------------------------------------- work


def upstream_work(config: Optional[HydraConfig], row: dict, data_dir: Path, overrides: Optional[List[str]],
                  given: Optional[str], updates: int, context: CellContext) -> dict:
    """Fine-tunes with `config` (unless `given` names the checkpoint) and decodes one upstream model."""
    started = time.monotonic()
    if given is None:
        context.runner.hydra_train(config, [*overrides, f"checkpoint.save_dir={context.directory}"],
                                   context.directory / "train.log", threads=context.threads, gpus=context.gpus)
    checkpoint = Path(given) if given else context.directory / "checkpoint_best.pt"
    return {**row, "mask_sparsity": 0.0, "updates": 0 if given else updates, "checkpoint": str(checkpoint),
            "mask_path": "", "train_seconds": round(time.monotonic() - started, 1),
            **decode(data_dir, checkpoint, context)}


def union_work(part_cells: List[str], file_name: str, sparsity: float, context: CellContext) -> dict:
    from ...core import stats
    from ...core.maskfile import load_mask_file, save_mask_file

    paths = [context.results[name]["mask_path"] for name in part_cells]
    path = context.directory / file_name
    save_mask_file(str(path), stats.union(*(load_mask_file(part).masks for part in paths)),
                   {"method": "union", "sparsity": sparsity, "parts": ",".join(paths)})
    return mask_result(path)


def iou_work(labelled: Dict[str, List[List]], context: CellContext) -> dict:
    """IOU of every pair of masks at each sparsity; `labelled`: sparsity label -> [(label, mask cell)]."""
    from ...core import stats
    from ...core.maskfile import load_mask_file

    rows = []
    for sparsity_text, pairs in labelled.items():
        loaded = {label: load_mask_file(context.results[cell]["mask_path"]).masks for label, cell in pairs}
        for (a, _), (b, _) in itertools.combinations(pairs, 2):
            rows.append({"sparsity": float(sparsity_text), "a": a, "b": b,
                         "iou": round(stats.iou(loaded[a], loaded[b]), 6)})
    return {"iou": rows}


def downstream_work(config: HydraConfig, row: dict, data_dir: Path, overrides: List[str], epochs: int,
                    max_tokens: int, world_size: int, mask_cell: Optional[str], context: CellContext) -> dict:
    """Fine-tunes one subnetwork downstream for `epochs` epochs (as exact updates) and decodes it."""
    updates = epochs * context.runner.epoch_updates(data_dir, max_tokens, world_size)
    mask = context.results[mask_cell] if mask_cell else {"mask_path": "", "mask_sparsity": 0.0}
    arguments = [*overrides, f"checkpoint.save_dir={context.directory}", f"optimization.max_update={updates}"]
    if mask_cell:
        arguments.append(f"+model.mask_path={mask['mask_path']}")
    started = time.monotonic()
    context.runner.hydra_train(config, arguments, context.directory / "train.log", world_size=world_size,
                               threads=context.threads, gpus=context.gpus)
    checkpoint = context.directory / "checkpoint_last.pt"
    return {**row, **mask, "updates": updates, "checkpoint": str(checkpoint),
            "train_seconds": round(time.monotonic() - started, 1), **decode(data_dir, checkpoint, context)}


# ------------------------------------------------------------------------------------------ plan


def placeholder_row(cell, stage, upstream, downstream, sparsity, source, mask_language, seed):
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(cell=cell, stage=stage, upstream=upstream, downstream=downstream, sparsity=sparsity,
               source=source, mask_language=mask_language, seed=seed)
    return row


class GridPlan(CorpusPlan):
    """Builds the engine cells of a grid whose corpus is (or will be) at `corpus` and whose run
    folder is `out_dir`; `cells` lists them in dependency order."""

    def __init__(self, spec: GridSpec, out_dir: Path, corpus: Path, config_root: Optional[Path] = None,
                 shared_dir: Optional[Path] = None):
        self.spec = spec
        self.mask_files: Dict[str, Path] = {}
        """Mask cell name -> the mask file it writes."""
        super().__init__(out_dir, corpus, spec.pretrained, spec.pretrain_updates, spec.seeds[0], config_root,
                         shared_dir)
        self.upstreams = {(language, seed): self._upstream(language, seed)
                          for language, seed in itertools.product(spec.upstream.languages, spec.seeds)}
        self.downstreams = plan_cells(spec)
        self.masks = {cell: self._mask(cell) for cell in self.downstreams if cell.sparsity > 0}
        self._iou()
        for cell in self.downstreams:
            self._downstream(cell)

    def _upstream(self, language: str, seed: int) -> str:
        up = self.spec.upstream
        name = f"upstream-{language}-seed{seed}"
        row = placeholder_row(name, "upstream", language, language, 0.0, "none", "", seed)
        given = up.checkpoints.get(language)
        if given:
            given = str(Path(given).resolve())
            work = partial(upstream_work, None, row, self.corpus / language, None, given, 0)
            return self.add(Cell(name, self.out_dir / "upstream" / f"{language}-seed{seed}", work,
                                 [Path(given), *self.manifests(language)], row=row))
        overrides = [
            f"common.user_dir={USER_DIR}", f"task.data={self.corpus / language}",
            f"model.w2v_path={self.pretrained_path}", f"optimization.max_update={up.updates}",
            f"optimization.lr=[{up.lr}]", f"common.seed={seed}", *up.overrides,
        ]
        work = partial(upstream_work, self.finetune_config(FINETUNE_CONFIG), row, self.corpus / language, overrides,
                       None, up.updates)
        return self.add(Cell(name, self.out_dir / "upstream" / f"{language}-seed{seed}", work,
                             [*self.pretrained_inputs, *self.manifests(language)], self.pretrained_after, row=row))

    def _pruned(self, label: str, sparsity: float, source_cell: Optional[str], method: Optional[str] = None,
                seed: int = 0) -> str:
        """The cell pruning `source_cell`'s checkpoint (None: the pretrained one) at `sparsity`."""
        prune = self.spec.prune
        label = f"{label}-s{sparsity_label(sparsity)}"
        method = method or prune.method
        work = partial(prune_work, source_cell, self.pretrained_path, f"{label}.mask", method, sparsity,
                       prune.targets, prune.layers, seed)
        if source_cell:
            return self._add_mask(label, work, [], [source_cell])
        return self._add_mask(label, work, self.pretrained_inputs, self.pretrained_after)

    def _add_mask(self, label: str, work, inputs: List[Path], after: List[str]) -> str:
        """A cell writing the mask file `masks/LABEL/LABEL.mask` (its work gets the file name)."""
        name = self.add(Cell(f"mask-{label}", self.out_dir / "masks" / label, work, inputs, after))
        self.mask_files[name] = self.out_dir / "masks" / label / f"{label}.mask"
        return name

    def _own(self, language: str, seed: int, sparsity: float) -> str:
        return self._pruned(f"{language}-seed{seed}", sparsity, self.upstreams[(language, seed)])

    def _mask(self, cell: DownstreamCell) -> str:
        if cell.source == "own":
            return self._own(cell.upstream, cell.seed, cell.sparsity)
        if cell.source == "swap":
            return self._own(cell.partner, cell.seed, cell.sparsity)
        if cell.source == "base":
            return self._pruned("base", cell.sparsity, None)
        if cell.source == "random":
            return self._pruned(f"random-seed{cell.seed}", cell.sparsity, None, "random", cell.seed)
        parts = [self._own(language, cell.seed, cell.sparsity) for language in (cell.upstream, cell.partner)]
        label = f"{cell.upstream}+{cell.partner}-seed{cell.seed}-s{sparsity_label(cell.sparsity)}"
        work = partial(union_work, parts, f"{label}.mask", cell.sparsity)
        return self._add_mask(label, work, [], parts)

    def _iou(self) -> None:
        spec = self.spec
        labelled = {}
        for sparsity in spec.iou_sparsities or [s for s in spec.prune.sparsities if s > 0]:
            labelled[sparsity_label(sparsity)] = [["base", self._pruned("base", sparsity, None)]] + [
                [language, self._own(language, spec.seeds[0], sparsity)] for language in spec.upstream.languages]
        masks = sorted({cell for pairs in labelled.values() for _, cell in pairs})
        self.add(Cell(IOU_CELL, self.out_dir / IOU_CELL, partial(iou_work, labelled), after=masks))

    def _downstream(self, cell: DownstreamCell) -> None:
        down = self.spec.downstream
        frozen = down.freeze_epochs if cell.downstream != cell.upstream else 0
        epochs = frozen + down.epochs
        upstream = self.upstreams[(cell.upstream, cell.seed)]
        upstream_checkpoint = self.cells[upstream].directory / "checkpoint_best.pt"
        if cell.upstream in self.spec.upstream.checkpoints:
            upstream_checkpoint = Path(self.spec.upstream.checkpoints[cell.upstream]).resolve()
        overrides = [
            f"common.user_dir={USER_DIR}", f"task.data={self.corpus / cell.downstream}",
            f"model.w2v_path={self.pretrained_path}", f"+model.init_from={upstream_checkpoint}",
            f"+model.freeze_encoder_epochs={frozen}", f"optimization.max_epoch={epochs}",
            f"optimization.lr=[{down.lr}]", f"dataset.max_tokens={down.max_tokens}", f"common.seed={cell.seed}",
            "checkpoint.save_interval=1", *down.overrides,
        ]
        mask = self.masks.get(cell)
        row = placeholder_row(cell.name, "downstream", cell.upstream, cell.downstream, cell.sparsity, cell.source,
                              cell.mask_language, cell.seed)
        inputs = self.manifests(cell.downstream) + ([self.mask_files[mask]] if mask else [])
        work = partial(downstream_work, self.finetune_config(FINETUNE_CONFIG), row, self.corpus / cell.downstream,
                       overrides, epochs, down.max_tokens, down.world_size, mask)
        self.add(Cell(cell.name, self.out_dir / "cells" / cell.name, work, inputs,
                      [upstream] + ([mask] if mask else []), row=row, ranks=down.world_size))


# ------------------------------------------------------------------------------------------- run


class GridRun(EngineGridRun):
    """A Storey et al. (2025) grid: results.csv / results.json hold every planned upstream and
    downstream cell, finished or not, and iou.csv the IOU cell's pairs."""

    plan = GridPlan
    method = METHOD
    columns = RESULT_COLUMNS

    def side_tables(self):
        return [(IOU_FILE, IOU_COLUMNS, self.results.get(IOU_CELL, {}).get("iou", []))]


# ------------------------------------------------------------------------------------ demo slice

SLICE_SPARSITIES = [0.0, 0.5, 0.9]
SLICE_UNSEEN_LANGUAGE = "ast"


def subnet_slice_spec(settings, result) -> GridSpec:
    """The demo's slice of the grid (settings and result: fairseq_subnets.demo's SkeletonSettings and
    SkeletonResult): the demo model's own subnetworks at three sparsities, fine-tuned downstream on
    its language and on an unseen one; the upstream model is the demo's fine-tuned checkpoint."""
    spec = GridSpec(
        path="make demo", name="demo-slice", data=result.corpus_dir, pretrained=result.pretrained_checkpoint,
        seeds=[settings.seed],
        upstream=UpstreamSpec(languages=[settings.language],
                              checkpoints={settings.language: result.finetuned_checkpoint}),
        prune=PruneSpec(sparsities=SLICE_SPARSITIES),
        downstream=DownstreamSpec(languages=[settings.language, SLICE_UNSEEN_LANGUAGE], epochs=1, freeze_epochs=1),
    )
    validate(spec)
    return spec


def run_subnet_slice(settings, result, say=print):
    """Runs the demo's slice into OUT/subnets; returns its finished result rows."""
    run = GridRun(subnet_slice_spec(settings, result), Path(settings.out_dir).resolve() / "subnets", say=say)
    run.run()
    return run.rows
