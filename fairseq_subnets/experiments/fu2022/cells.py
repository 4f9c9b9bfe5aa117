"""The cells of a Fu et al. (2022) grid and the work each one does.

(1) `pretrain`: the tiny wav2vec2 (the engine's cell), unless the grid names a pretrained checkpoint;
(2) `finetune-LANG`: weight fine-tuning (config `tiny`), decoded: Fig. 2's baseline, and the model
Fig. 4 prunes; (3) `s3router-LANG-sS-INIT-TARGETS`: learned masks on the frozen pretrained weights
(config `learned_masks_tiny`), decoded, its masks extracted into a mask file; (4) Fig. 4, from each
fine-tuned model: `s3router-p-LANG-sS` (learned masks on the fine-tuned weights) against
`mask-global-l1-LANG-sS` (global L1 pruning) then `global-l1-LANG-sS` (weight fine-tuning under that
fixed mask for as many updates); (5) `bundle`: the reference S3-Router runs of several languages
on one backbone, and `bundle-LANG`: each language decoded from it; (6) `similarity`: per-layer
cosine similarity of the languages' learned masks and its correlation with the grid's language
similarity matrix.

What enters each cache key (engine/cells.py): the arguments bound to the cell's work (the grid-file
keys it reads), the config files it trains with, the manifests it trains or decodes on, a given
pretrained checkpoint, a mask file it applies and the similarity matrix (by content), and the keys
of the cells it builds on. So changing
`s3router.lr` reruns every S3-Router run and the bundle and similarity built on them, but neither
the weight fine-tuning nor Fig. 4; changing `finetune.lr` reruns the fine-tuned models and Fig. 4.

Work functions are module-level and take plain values (functools.partial), so submitit can pickle
them for another process; they run fairseq through `context.runner`. Pretraining, decoding and
pruning are the engine's shared work (engine/grid_plan.py).
"""
import math
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

from ... import USER_DIR
from ...component_names import PLUGIN_MULTILINGUAL_TASK
from ...engine.cells import Cell, CellContext
from ...engine.grid_plan import CorpusPlan, decode, mask_result, prune_work
from ...engine.grid_run import GridRun as EngineGridRun
from ...engine.hydra_configs import HydraConfig
from .spec import METHOD, GridSpec, LearnedRun, plan_learned_runs, reference_run, sparsity_label

WEIGHTS, S3ROUTER, S3ROUTER_P, GLOBAL_L1, BUNDLE = "weights", "s3router", "s3router-p", "global-l1", "bundle"
"""What a row of results.csv is: weight fine-tuning, learned masks on the pretrained weights, learned
masks on the fine-tuned weights, global L1 then weight fine-tuning, a language decoded from the bundle."""
RESULT_COLUMNS = (
    "cell", "method", "language", "sparsity", "init", "targets", "layers", "seed", "cer", "wer", "own_cer",
    "test_utterances", "mask_sparsity", "mask_bytes", "head_bytes", "backbone_fraction", "updates", "lr",
    "checkpoint", "mask_path", "train_seconds", "decode_seconds",
)
SIMILARITY_COLUMNS = ("layer", "a", "b", "mask_cosine", "language_similarity")
CORRELATION_COLUMNS = ("layer", "pearson", "spearman", "pairs")
SIMILARITY_FILE = "similarity.csv"
"""Cosine similarity of the learned masks of each pair of languages per layer, beside the pair's
language similarity."""
CORRELATION_FILE = "correlation.csv"
"""Pearson and Spearman between the two, per layer."""
BUNDLE_CELL = "bundle"
SIMILARITY_CELL = "similarity"
FINETUNE_CONFIG = "tiny"
LEARNED_CONFIG = "learned_masks_tiny"
LEARNED_MASK_FILE = "learned.mask"
DECODED_CHECKPOINT = "checkpoint_best.pt"
"""What every training cell decodes, and what the bundle holds: the best by validation loss."""


# ------------------------------------------------------------------------------------------- work


def train_and_decode(config: HydraConfig, row: dict, data_dir: Path, overrides: List[str],
                     context: CellContext) -> dict:
    started = time.monotonic()
    context.runner.hydra_train(config, [*overrides, f"checkpoint.save_dir={context.directory}"],
                               context.directory / "train.log", threads=context.threads, gpus=context.gpus)
    checkpoint = context.directory / DECODED_CHECKPOINT
    return {**row, "checkpoint": str(checkpoint), "train_seconds": round(time.monotonic() - started, 1),
            **decode(data_dir, checkpoint, context)}


def finetune_work(config: HydraConfig, row: dict, data_dir: Path, overrides: List[str], mask_cell: Optional[str],
                  context: CellContext) -> dict:
    """Weight fine-tuning, under the fixed mask `mask_cell` wrote when there is one."""
    mask = context.results[mask_cell] if mask_cell else {"mask_path": "", "mask_sparsity": 0.0}
    arguments = [*overrides, f"+model.mask_path={mask['mask_path']}"] if mask_cell else overrides
    return {**train_and_decode(config, row, data_dir, arguments, context), **mask}


def learned_work(config: HydraConfig, row: dict, data_dir: Path, overrides: List[str], context: CellContext) -> dict:
    """Learns masks, decodes, and writes the learned masks as a mask file (their actual sparsity is
    in the row: each selected matrix loses exactly its share)."""
    from ...plugin.tools.prune import extract_checkpoint_masks

    result = train_and_decode(config, row, data_dir, overrides, context)
    path = context.directory / LEARNED_MASK_FILE
    extract_checkpoint_masks(result["checkpoint"], str(path))
    return {**result, **mask_result(path)}


def bundle_work(sources: Dict[str, str], context: CellContext) -> dict:
    """The bundle of the runs of `sources` (language -> cell) and what each language costs in it."""
    from ...plugin.formats.bundles import build_bundle, storage, write_bundle

    bundle = build_bundle({language: context.results[cell]["checkpoint"] for language, cell in sources.items()})
    path = context.directory / "bundle.pt"
    write_bundle(bundle, str(path))
    return {"bundle": str(path), "storage": {
        entry.language: {"mask_bytes": entry.mask_bytes, "head_bytes": entry.head_bytes,
                         "backbone_fraction": round(entry.backbone_fraction, 6)} for entry in storage(bundle)}}


def bundle_decode_work(row: dict, corpus: Path, languages: List[str], own_cell: str, context: CellContext) -> dict:
    """Decodes the row's language from the bundle with stock fairseq-generate (multilingual task) and
    puts the CER of the language's own run beside it: the two must be equal."""
    bundle = context.results[BUNDLE_CELL]
    language = row["language"]
    decoded = decode(corpus, bundle["bundle"], context, task_args=(
        "--task", PLUGIN_MULTILINGUAL_TASK, "--languages", ",".join(languages), "--decode-language", language))
    return {**row, **bundle["storage"][language], **decoded, "own_cer": context.results[own_cell]["cer"],
            "checkpoint": bundle["bundle"]}


def _finite(value: float):
    """A correlation, or None where it is undefined (a constant side): results show it as missing."""
    return None if math.isnan(value) else round(value, 6)


def similarity_work(mask_cells: Dict[str, str], layers: str, matrix: Optional[str], context: CellContext) -> dict:
    """Per-layer (and overall) cosine similarity of every pair of the languages' learned masks, as
    `fairseq-subnets masks similarity --by layer` computes it, and with `matrix` its Pearson and
    Spearman correlation with the language similarities (`masks correlate`)."""
    from ...core import stats
    from ...core.maskfile import load_mask_file
    from ...core.targets import parse_layers

    languages = list(mask_cells)
    masks = [load_mask_file(context.results[cell]["mask_path"]).masks for cell in mask_cells.values()]
    chosen = parse_layers(layers)
    matrices = {group: values for group, values in stats.pairwise(masks, "cosine", "layer").items()
                if group == "total" or (group.isdigit() and (chosen is None or int(group) in chosen))}
    given = stats.read_labelled_matrix(matrix, languages) if matrix else None
    pairs = [{"layer": group, "a": languages[i], "b": languages[j], "mask_cosine": round(float(values[i, j]), 6),
              "language_similarity": "" if given is None else float(given[i, j])}
             for group, values in matrices.items()
             for i in range(len(languages)) for j in range(i + 1, len(languages))]
    correlations = []
    if matrix:
        correlations = [{"layer": group, "pearson": _finite(found["pearson"]), "spearman": _finite(found["spearman"]),
                         "pairs": found["pairs"]}
                        for group, found in stats.correlate_with_file(matrices, languages, matrix).items()]
    return {"similarity": pairs, "correlation": correlations}


# ------------------------------------------------------------------------------------------ plan


def placeholder_row(cell: str, method: str, language: str, sparsity: float, seed: int, init="", targets="",
                    layers="", updates="", lr="") -> dict:
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(cell=cell, method=method, language=language, sparsity=sparsity, init=init, targets=targets,
               layers=layers, seed=seed, updates=updates, lr=lr)
    return row


def score_overrides(sparsity: float, init: str, targets: str, layers: str, scope: str) -> List[str]:
    """The learned-mask keys; targets and layers quoted, as Hydra reads `q,k` as a sweep."""
    return [f"model.score_sparsity={sparsity}", f"model.score_init={init}", f"model.score_targets='{targets}'",
            f"model.score_layers='{layers}'", f"model.score_scope={scope}"]


class GridPlan(CorpusPlan):
    """Builds the engine cells of a grid whose corpus is (or will be) at `corpus` and whose run
    folder is `out_dir`; `cells` lists them in dependency order."""

    def __init__(self, spec: GridSpec, out_dir: Path, corpus: Path, config_root: Optional[Path] = None,
                 shared_dir: Optional[Path] = None):
        self.spec = spec
        super().__init__(out_dir, corpus, spec.pretrained, spec.pretrain_updates, spec.pretraining_seed, config_root,
                         shared_dir)
        self.finetuned = {language: self._finetune(language) for language in spec.languages}
        self.learned = {run: self._learned(run) for run in plan_learned_runs(spec)}
        for language in spec.pruning.languages:
            for sparsity in spec.pruning.sparsities:
                self._s3router_p(language, sparsity)
                self._global_l1(language, sparsity)
        if spec.bundle.languages:
            self._bundle()
        if spec.similarity.languages:
            self._similarity()

    def training_overrides(self, language: str, updates: int, lr: float, overrides: List[str]) -> List[str]:
        """What every training cell sets, then `overrides` (score keys, the grid's overrides)."""
        return [f"common.user_dir={USER_DIR}", f"task.data={self.corpus / language}",
                f"model.w2v_path={self.pretrained_path}", f"optimization.max_update={updates}",
                f"optimization.lr=[{lr}]", f"common.seed={self.spec.seed}", *overrides]

    def _finetune(self, language: str) -> str:
        tune = self.spec.finetune
        name = f"finetune-{language}"
        row = placeholder_row(name, WEIGHTS, language, 0.0, self.spec.seed, updates=tune.updates, lr=tune.lr)
        overrides = self.training_overrides(language, tune.updates, tune.lr, tune.overrides)
        work = partial(finetune_work, self.finetune_config(FINETUNE_CONFIG), row, self.corpus / language, overrides,
                       None)
        return self.add(Cell(name, self.out_dir / "finetune" / language, work,
                             [*self.pretrained_inputs, *self.manifests(language)], self.pretrained_after, row=row))

    def _learned(self, run: LearnedRun) -> str:
        router = self.spec.s3router
        row = placeholder_row(run.name, S3ROUTER, run.language, run.sparsity, self.spec.seed, run.init, run.targets,
                              router.layers, router.updates, router.lr)
        scores = score_overrides(run.sparsity, run.init, run.targets, router.layers, router.scope)
        overrides = self.training_overrides(run.language, router.updates, router.lr, [*scores, *router.overrides])
        work = partial(learned_work, self.finetune_config(LEARNED_CONFIG), row, self.corpus / run.language, overrides)
        return self.add(Cell(run.name, self.out_dir / "s3router" / run.name[len("s3router-"):], work,
                             [*self.pretrained_inputs, *self.manifests(run.language)], self.pretrained_after, row=row))

    def finetuned_checkpoint(self, language: str) -> Path:
        return self.cells[self.finetuned[language]].directory / DECODED_CHECKPOINT

    def _s3router_p(self, language: str, sparsity: float) -> None:
        """Learned masks (pruning.init, pruning.targets) on the fine-tuned model's frozen weights."""
        pruning, router = self.spec.pruning, self.spec.s3router
        name = f"s3router-p-{language}-s{sparsity_label(sparsity)}"
        row = placeholder_row(name, S3ROUTER_P, language, sparsity, self.spec.seed, pruning.init, pruning.targets,
                              pruning.layers, pruning.updates, pruning.s3router_lr)
        scores = score_overrides(sparsity, pruning.init, pruning.targets, pruning.layers, router.scope)
        overrides = self.training_overrides(language, pruning.updates, pruning.s3router_lr, [
            f"+model.init_from={self.finetuned_checkpoint(language)}", *scores, *router.overrides])
        work = partial(learned_work, self.finetune_config(LEARNED_CONFIG), row, self.corpus / language, overrides)
        self.add(Cell(name, self.out_dir / "pruning" / name, work, self.manifests(language),
                      [self.finetuned[language]], row=row))

    def _global_l1(self, language: str, sparsity: float) -> None:
        """Global L1 pruning of the fine-tuned model, then weight fine-tuning under that fixed mask."""
        pruning, tune = self.spec.pruning, self.spec.finetune
        label = f"{language}-s{sparsity_label(sparsity)}"
        mask_name = f"mask-{GLOBAL_L1}-{label}"
        prune = partial(prune_work, self.finetuned[language], self.pretrained_path, f"{label}.mask", GLOBAL_L1,
                        sparsity, pruning.targets, pruning.layers, 0)
        self.add(Cell(mask_name, self.out_dir / "masks" / label, prune, after=[self.finetuned[language]]))
        name = f"{GLOBAL_L1}-{label}"
        row = placeholder_row(name, GLOBAL_L1, language, sparsity, self.spec.seed, targets=pruning.targets,
                              layers=pruning.layers, updates=pruning.updates, lr=pruning.finetune_lr)
        overrides = self.training_overrides(language, pruning.updates, pruning.finetune_lr, [
            f"+model.init_from={self.finetuned_checkpoint(language)}", *tune.overrides])
        work = partial(finetune_work, self.finetune_config(FINETUNE_CONFIG), row, self.corpus / language, overrides,
                       mask_name)
        self.add(Cell(name, self.out_dir / "pruning" / name, work,
                      [*self.manifests(language), self.out_dir / "masks" / label / f"{label}.mask"],
                      [self.finetuned[language], mask_name], row=row))

    def _bundle(self) -> None:
        languages = self.spec.bundle.languages
        own = {language: self.learned[reference_run(self.spec, language)] for language in languages}
        self.add(Cell(BUNDLE_CELL, self.out_dir / BUNDLE_CELL, partial(bundle_work, own), after=list(own.values())))
        router = self.spec.s3router
        for language in languages:
            name = f"{BUNDLE}-{language}"
            row = placeholder_row(name, BUNDLE, language, router.sparsity, self.spec.seed, router.init,
                                  router.targets, router.layers)
            work = partial(bundle_decode_work, row, self.corpus, languages, own[language])
            self.add(Cell(name, self.out_dir / "bundle-decode" / language, work, self.manifests(language),
                          [BUNDLE_CELL, own[language]], row=row))

    def _similarity(self) -> None:
        similarity = self.spec.similarity
        masks = {language: self.learned[reference_run(self.spec, language)] for language in similarity.languages}
        matrix = Path(similarity.matrix).resolve() if similarity.matrix else None
        work = partial(similarity_work, masks, similarity.layers, str(matrix) if matrix else None)
        self.add(Cell(SIMILARITY_CELL, self.out_dir / SIMILARITY_CELL, work, [matrix] if matrix else [],
                      list(masks.values())))


# ------------------------------------------------------------------------------------------- run


class GridRun(EngineGridRun):
    """A Fu et al. (2022) grid: results.csv / results.json hold every weight fine-tuning,
    S3-Router, S3-Router-P, global L1 and bundle decoding cell, finished or not; similarity.csv and
    correlation.csv the similarity cell's tables."""

    plan = GridPlan
    method = METHOD
    columns = RESULT_COLUMNS

    def side_tables(self):
        similarity = self.results.get(SIMILARITY_CELL, {})
        return [(SIMILARITY_FILE, SIMILARITY_COLUMNS, similarity.get("similarity", [])),
                (CORRELATION_FILE, CORRELATION_COLUMNS, similarity.get("correlation", []))]
