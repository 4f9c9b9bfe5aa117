"""The cells of a Yang et al. (2023) grid and the work each one does.

(1) `pretrain`: the tiny wav2vec2 (the engine's cell), unless the grid names a pretrained checkpoint.
(2) `theta0-glG`: θ0, dense multilingual fine-tuning of the pretrained model (`multilingual_tiny`)
with group-lasso strength G, one per strength of the grid. Every later run starts from it
(`model.init_from`), as in the paper, where the pruning runs and the pathways begin at the dense
model and LTH rewinds to it.
(3) Training from θ0 through stock fairseq-hydra-train with a shipped config:
- `dense-glG`: θ0 trained on multilingually for the same budget as the others, the dense baseline;
- `lap-glG`: language-agnostic pruning, the grid's IMP schedule during multilingual training;
- `lsp-imp-glG-LANG`, `lsp-lth-glG-LANG`: language-specific pruning, IMP (`imp_tiny`) or LTH
  (`lth_tiny`, rewinding to θ0, its learning-rate schedule fitted to one pruning level) on one
  language's data from θ0's head of that language (`model.init_from_language`), decoded on its
  test set; their `pruned.mask` is the language's mask;
- `random-masks`: one random mask per language at the target sparsity (`prune --method random`,
  a seed per language), over the matrices the schedule prunes;
- `pathways-random`, `pathways-imp-glG`, `pathways-lth-glG`: multilingual training with one mask per
  language (`pathways_tiny`): the random masks from θ0 without group lasso, or the LSP masks of
  IMP or LTH from the θ0 their pruning runs started from.
G is a group-lasso strength of the grid (0: without): it is on in θ0, the dense baseline and the
pruning runs (which switch it off at the target sparsity), off in the pathways' training.
(4) `MODEL-on-LANG`: a multilingual model decoded on each language's test set (stock
fairseq-generate, the multilingual task, `--decode-language`).
(5) `masks-imp-glG`, `masks-lth-glG`, `masks-random`: the language masks compared, as `masks iou`
and `masks ratio` compare them (Fig. 3): IOU of every pair, the union ratio of all, and each
mask's sparsity per layer.

Every run is decoded from `checkpoint_last.pt`: the same budget of updates for every model of a
kind, and a pruning run's model at its final mask.
"""
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

from ... import USER_DIR
from ...component_names import PLUGIN_MULTILINGUAL_TASK
from ...engine.cells import Cell, CellContext
from ...engine.grid_plan import CorpusPlan, decode
from ...engine.grid_run import GridRun as EngineGridRun
from ...engine.hydra_configs import HydraConfig
from .spec import (
    DENSE, LAP, LSP_IMP, LSP_LTH, METHOD, PATHWAYS_IMP, PATHWAYS_LTH, PATHWAYS_RANDOM, GridSpec, lasso_label,
)

RESULT_COLUMNS = (
    "cell", "model", "group_lasso", "language", "seed", "cer", "wer", "test_utterances", "sparsity", "updates", "lr",
    "checkpoint", "train_seconds", "decode_seconds",
)
MASK_COLUMNS = ("cell", "masks", "group_lasso", "a", "b", "iou", "union_ratio")
LAYER_COLUMNS = ("cell", "masks", "group_lasso", "language", "layer", "sparsity")
MASKS_FILE = "masks.csv"
"""The IOU of every pair of language masks and the union ratio of each set (Fig. 3)."""
LAYERS_FILE = "layer_sparsity.csv"
"""Each language mask's sparsity per encoder layer."""
DECODED_CHECKPOINT = "checkpoint_last.pt"
PRUNED_MASK = "pruned.mask"
RANDOM_MASKS_CELL = "random-masks"
THETA0 = "theta0"
MULTILINGUAL_CONFIG = "multilingual_tiny"
PATHWAYS_CONFIG = "pathways_tiny"
PRUNING_KEYS = ("interval", "fraction", "target_sparsity", "criterion", "scope")


# ------------------------------------------------------------------------------------------- work


def mask_sparsity(path: Path) -> float:
    from ...core.maskfile import load_mask_file
    from ...core.stats import sparsity

    return round(sparsity(load_mask_file(str(path)).masks), 6)


def train_work(config: HydraConfig, overrides: List[str], start: Optional[str], context: CellContext) -> dict:
    """Trains one run, from the checkpoint of the `start` cell (θ0) if named; its checkpoint and,
    for a pruning run, its final masks."""
    started = time.monotonic()
    if start is not None:
        overrides = [*overrides, f"+model.init_from={context.results[start]['checkpoint']}"]
    context.runner.hydra_train(config, [*overrides, f"checkpoint.save_dir={context.directory}"],
                               context.directory / "train.log", threads=context.threads, gpus=context.gpus)
    result = {"checkpoint": str(context.directory / DECODED_CHECKPOINT),
              "train_seconds": round(time.monotonic() - started, 1)}
    mask = context.directory / PRUNED_MASK
    if mask.exists():
        result.update(mask=str(mask), sparsity=mask_sparsity(mask))
    return result


def monolingual_work(config: HydraConfig, overrides: List[str], start: str, row: dict, data_dir: Path,
                     context: CellContext) -> dict:
    """An LSP run: trains on one language from θ0, then decodes its test set."""
    trained = train_work(config, overrides, start, context)
    return {**row, **trained, **decode(data_dir, trained["checkpoint"], context)}


def language_mask_paths(mask_cells: Dict[str, str], results: Dict[str, dict]) -> Dict[str, str]:
    """language -> the mask file the language's cell made (a pruning run's final mask, or the
    random-masks cell's file of that language)."""
    return {language: results[cell]["masks"][language] if cell == RANDOM_MASKS_CELL else results[cell]["mask"]
            for language, cell in mask_cells.items()}


def pathways_work(config: HydraConfig, overrides: List[str], start: str, mask_cells: Dict[str, str],
                  context: CellContext) -> dict:
    """Multilingual training from θ0 with each language's mask from the cell that made it."""
    masks = language_mask_paths(mask_cells, context.results)
    files = ",".join(f"{language}:{path}" for language, path in masks.items())
    trained = train_work(config, [*overrides, f"model.language_mask_files=[{files}]"], start, context)
    return {**trained, "masks": masks, "sparsity": {language: mask_sparsity(Path(path)) for language, path in masks.items()}}


def random_masks_work(pretrained: Path, languages: List[str], sparsity: float, context: CellContext) -> dict:
    """One random mask per language over every prunable matrix, at the target sparsity."""
    from ...plugin.tools.prune import prune_checkpoint

    masks = {}
    for seed, language in enumerate(languages):
        path = context.directory / f"{language}.mask"
        prune_checkpoint(str(pretrained), str(path), "random", sparsity, seed=seed)
        masks[language] = str(path)
    return {"masks": masks}


def decode_work(row: dict, corpus: Path, languages: List[str], trained_cell: str, context: CellContext) -> dict:
    """Decodes the row's language from a multilingual checkpoint with its head and masks."""
    trained = context.results[trained_cell]
    language = row["language"]
    sparsity = trained.get("sparsity", 0.0)
    decoded = decode(corpus, trained["checkpoint"], context, task_args=(
        "--task", PLUGIN_MULTILINGUAL_TASK, "--languages", ",".join(languages), "--decode-language", language))
    return {**row, "checkpoint": trained["checkpoint"], "train_seconds": trained["train_seconds"],
            "sparsity": sparsity[language] if isinstance(sparsity, dict) else sparsity, **decoded}


def masks_work(label: str, group_lasso, mask_cells: Dict[str, str], context: CellContext) -> dict:
    """IOU of every pair of the language masks, their union ratio, and each one's sparsity per layer."""
    from ...core import stats
    from ...core.maskfile import load_mask_file

    loaded = {language: load_mask_file(path).masks
              for language, path in language_mask_paths(mask_cells, context.results).items()}
    languages = list(loaded)
    common = {"cell": context.directory.name, "masks": label, "group_lasso": group_lasso}
    pairs = [{**common, "a": a, "b": b, "iou": round(stats.iou(loaded[a], loaded[b]), 6), "union_ratio": ""}
             for i, a in enumerate(languages) for b in languages[i + 1:]]
    union = {**common, "a": "all", "b": "", "iou": "",
             "union_ratio": round(stats.union_ratio([loaded[language] for language in languages]), 6)}
    layers = [{**common, "language": language, "layer": group, "sparsity": round(value, 6)}
              for language in languages
              for group, value in stats.sparsity_by(loaded[language], "layer").items() if group != "total"]
    return {"mask_rows": [*pairs, union], "layer_rows": layers}


# ------------------------------------------------------------------------------------------ plan


def lr_schedule_of_one_level(interval: int) -> List[str]:
    """subnets_tri_stage phases filling one pruning level of `interval` updates (LTH restarts the
    schedule at every rewind): 10% warm-up, 60% hold, 30% decay."""
    warmup, decay = max(1, interval // 10), max(1, 3 * interval // 10)
    return [f"lr_scheduler.warmup_steps={warmup}", f"lr_scheduler.hold_steps={max(0, interval - warmup - decay)}",
            f"lr_scheduler.decay_steps={decay}"]


class GridPlan(CorpusPlan):
    """Builds the engine cells of a grid whose corpus is (or will be) at `corpus` and whose run
    folder is `out_dir`; `cells` lists them in dependency order."""

    def __init__(self, spec: GridSpec, out_dir: Path, corpus: Path, config_root: Optional[Path] = None,
                 shared_dir: Optional[Path] = None):
        self.spec = spec
        super().__init__(out_dir, corpus, spec.pretrained, spec.pretrain_updates, spec.pretraining_seed, config_root,
                         shared_dir)
        theta0 = {strength: self._theta0(strength) for strength in spec.group_lasso}
        without = theta0[0.0] if 0.0 in theta0 else self._theta0(0.0)
        random_masks = self._random_masks()
        self._decoded(self._pathways(PATHWAYS_RANDOM, without, dict.fromkeys(spec.languages, random_masks)),
                      PATHWAYS_RANDOM, "")
        self._masks("random", "", dict.fromkeys(spec.languages, random_masks))
        for strength, start in theta0.items():
            label = lasso_label(strength)
            lasso = [f"+model.group_lasso_strength={strength}"]
            self._decoded(self._multilingual(f"{DENSE}-{label}", start, lasso), DENSE, strength)
            lap = self._multilingual(f"{LAP}-{label}", start, self._pruning_options(strength, appended=True))
            self._decoded(lap, LAP, strength)
            for model, config in ((LSP_IMP, "imp_tiny"), (LSP_LTH, "lth_tiny")):
                masks = {language: self._monolingual(model, config, start, strength, language)
                         for language in spec.languages}
                kind = model.split("-")[1]
                pathways = PATHWAYS_IMP if kind == "imp" else PATHWAYS_LTH
                self._decoded(self._pathways(f"{pathways}-{label}", start, masks), pathways, strength)
                self._masks(kind, strength, masks)

    def row(self, name: str, model: str, group_lasso, language: str, updates: int, lr: float) -> dict:
        row = dict.fromkeys(RESULT_COLUMNS, "")
        row.update(cell=name, model=model, group_lasso=group_lasso, language=language, seed=self.spec.seed,
                   updates=updates, lr=lr)
        return row

    def _common(self, updates: int, lr: float) -> List[str]:
        return [f"common.user_dir={USER_DIR}", f"model.w2v_path={self.pretrained_path}",
                f"optimization.max_update={updates}", f"optimization.lr=[{lr}]", f"common.seed={self.spec.seed}"]

    def _multilingual_options(self, updates: int, lr: float) -> List[str]:
        spec = self.spec
        return [f"task.data={self.corpus}", f"task.languages=[{','.join(spec.languages)}]",
                f"task.language_sampling_alpha={spec.multilingual.alpha}", *self._common(updates, lr)]

    def _pruning_options(self, strength: float, appended: bool) -> List[str]:
        """model.pruning_* and group lasso over a config that sets them (imp_tiny, lth_tiny) or not
        (`appended`: multilingual_tiny, where Hydra needs `+`)."""
        plus = "+" if appended else ""
        pruning = self.spec.pruning
        return [*(f"{plus}model.pruning_{key}={getattr(pruning, key)}" for key in PRUNING_KEYS),
                f"{plus}model.group_lasso_strength={strength}"]

    def _inputs(self, languages) -> List[Path]:
        return [*self.pretrained_inputs, *(path for language in languages for path in self.manifests(language))]

    def _theta0(self, strength: float) -> str:
        """θ0: dense multilingual training from the pretrained model, with group lasso `strength`."""
        spec, theta0 = self.spec, self.spec.theta0
        overrides = [*self._multilingual_options(theta0.updates, theta0.lr),
                     f"+model.group_lasso_strength={strength}", *theta0.overrides]
        name = f"{THETA0}-{lasso_label(strength)}"
        return self.add(Cell(name, self.out_dir / "train" / name,
                             partial(train_work, self.finetune_config(MULTILINGUAL_CONFIG), overrides, None),
                             self._inputs(spec.languages), self.pretrained_after))

    def _multilingual(self, name: str, start: str, options: List[str]) -> str:
        """Multilingual training from θ0 (`start`) with `options`: the dense baseline, LAP."""
        spec, multilingual = self.spec, self.spec.multilingual
        overrides = [*self._multilingual_options(multilingual.updates, multilingual.lr), *options,
                     *multilingual.overrides]
        return self.add(Cell(name, self.out_dir / "train" / name,
                             partial(train_work, self.finetune_config(MULTILINGUAL_CONFIG), overrides, start),
                             self._inputs(spec.languages), [start]))

    def _monolingual(self, model: str, config_name: str, start: str, strength: float, language: str) -> str:
        pruning = self.spec.pruning
        name = f"{model}-{lasso_label(strength)}-{language}"
        options = [*self._pruning_options(strength, appended=False), f"+model.init_from_language={language}"]
        if model == LSP_LTH:
            options += lr_schedule_of_one_level(pruning.interval)
        overrides = [f"task.data={self.corpus / language}", *self._common(pruning.updates, pruning.lr), *options,
                     *pruning.overrides]
        row = self.row(name, model, strength, language, pruning.updates, pruning.lr)
        work = partial(monolingual_work, self.finetune_config(config_name), overrides, start, row,
                       self.corpus / language)
        return self.add(Cell(name, self.out_dir / "train" / name, work, self._inputs([language]), [start],
                             row=row))

    def _random_masks(self) -> str:
        spec = self.spec
        work = partial(random_masks_work, self.pretrained_path, spec.languages, spec.pruning.target_sparsity)
        return self.add(Cell(RANDOM_MASKS_CELL, self.out_dir / RANDOM_MASKS_CELL, work, self.pretrained_inputs,
                             self.pretrained_after))

    def _pathways(self, name: str, start: str, mask_cells: Dict[str, str]) -> str:
        spec, multilingual = self.spec, self.spec.multilingual
        overrides = [*self._multilingual_options(multilingual.updates, multilingual.lr), *multilingual.overrides]
        work = partial(pathways_work, self.finetune_config(PATHWAYS_CONFIG), overrides, start, mask_cells)
        return self.add(Cell(name, self.out_dir / "train" / name, work, self._inputs(spec.languages),
                             [start, *dict.fromkeys(mask_cells.values())]))

    def _decoded(self, trained: str, model: str, strength) -> None:
        multilingual = self.spec.multilingual
        for language in self.spec.languages:
            name = f"{trained}-on-{language}"
            row = self.row(name, model, strength, language, multilingual.updates, multilingual.lr)
            work = partial(decode_work, row, self.corpus, self.spec.languages, trained)
            self.add(Cell(name, self.out_dir / "decode" / name, work, self.manifests(language), [trained], row=row))

    def _masks(self, kind: str, strength, mask_cells: Dict[str, str]) -> None:
        name = f"masks-{kind}" + (f"-{lasso_label(strength)}" if strength != "" else "")
        work = partial(masks_work, kind, strength, mask_cells)
        self.add(Cell(name, self.out_dir / "masks" / name, work, [], list(dict.fromkeys(mask_cells.values()))))


# ------------------------------------------------------------------------------------------- run


class GridRun(EngineGridRun):
    """A Yang et al. (2023) grid: results.csv / results.json hold one row per model and language,
    finished or not; masks.csv and layer_sparsity.csv the mask analyses of the finished cells."""

    plan = GridPlan
    method = METHOD
    columns = RESULT_COLUMNS

    def side_tables(self):
        analysed = [self.results[cell.name] for cell in self.cells
                    if cell.name in self.results and "mask_rows" in self.results[cell.name]]
        return [(MASKS_FILE, MASK_COLUMNS, [row for result in analysed for row in result["mask_rows"]]),
                (LAYERS_FILE, LAYER_COLUMNS, [row for result in analysed for row in result["layer_rows"]])]
