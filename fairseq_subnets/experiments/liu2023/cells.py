"""The cells of a Liu et al. (2023) grid and the work each one does.

(1) `pretrain`: the tiny wav2vec2 (the engine's cell), unless the grid names a pretrained checkpoint;
(2) one training cell per run (`full-LANG`, `lora-LANG`, ..., `adalora-rankmap-LANG`): stock
fairseq-hydra-train with the run's shipped config for the grid's budget of updates, then its
parameter counts, its learned ranks and its in-domain test CER; (3) `RUN-on-OOD`: the run decoded
on each out-of-domain test set.

Every run is decoded from `checkpoint_last.pt`: the same budget of updates for every method, and
AdaLoRA's ranks at their final budget (a best-by-validation checkpoint may predate it).

An out-of-domain test set is decoded with the training language's dictionary (the model's output
layer is built from it): the cell copies the test audio list beside that dictionary with the
references written in its alphabet, that is, without the characters it lacks (which the model
cannot output, and which the plugin's data check refuses). The row says what share of the
reference characters that removed (`unknown_characters`).

What enters each cache key (engine/cells.py): the arguments bound to the cell's work (the grid keys
it reads), the config files it trains with (a tuner's shipped `<method>_tiny.yaml` and the files it
pulls in), the manifests, a given pretrained checkpoint (by content) and the keys of the cells it
builds on: so changing `tuners.lr` reruns the tuners and their decodings, not full fine-tuning, and
editing LoRA's `techniques/tuners/lora/configs/tuner/lora.yaml` reruns the LoRA run and its decodings only.
"""
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch

from ... import USER_DIR
from ...core.targets import KINDS
from ...engine.cells import Cell, CellContext
from ...engine.grid_plan import CorpusPlan, decode
from ...engine.grid_run import GridRun as EngineGridRun
from ...engine.hydra_configs import HydraConfig
from .spec import FULL, METHOD, GridSpec, TrainingRun, plan_runs

RESULT_COLUMNS = (
    "cell", "method", "setting", "language", "eval_language", "domain", "seed", "cer", "wer", "test_utterances",
    "unknown_characters", "trainable_params", "trainable_percent", "head_params", "backbone_params", "ranks_in_use",
    "updates", "lr", "checkpoint", "train_seconds", "decode_seconds",
)
IN_DOMAIN, OUT_OF_DOMAIN = "in", "out"
DECODED_CHECKPOINT = "checkpoint_last.pt"
TEST_FILES = ("test.tsv", "test.ltr")
"""What fairseq-generate reads of a test set (`--labels ltr`): an out-of-domain cell's inputs."""
DICTIONARY = "dict.ltr.txt"
RANKS_FILE = "ranks.csv"
"""The rank in use of every adapted matrix of each finished run with ranks: one row per run and
encoder layer, a column per matrix kind, empty where the run adapts no such matrix."""
RANK_COLUMNS = ("cell", "method", "setting", "layer", *KINDS)


# ------------------------------------------------------------------------------------------- work


def parameter_counts(state: Mapping[str, torch.Tensor], full: bool) -> dict:
    """What a run trained, from its checkpoint: the tuner's parameters (a tensor shared by several
    matrices, S2-LoRA's factors, once), or every backbone weight for full fine-tuning; the output
    layer, which every run trains, apart; and the share of the pretrained model's parameters."""
    from ...plugin.formats.adapters import backbone_tensors
    from ...techniques.tuners import tuner_trained_count
    from ...techniques.extension import STOCK_OUTPUT_LAYER_PREFIX

    backbone = sum(tensor.numel() for tensor in backbone_tensors(state).values())
    trainable = backbone if full else tuner_trained_count(state)
    return {"trainable_params": trainable, "trainable_percent": round(100.0 * trainable / backbone, 4),
            "head_params": sum(tensor.numel() for key, tensor in state.items()
                               if key.startswith(STOCK_OUTPUT_LAYER_PREFIX)),
            "backbone_params": backbone}


def rank_rows(state: Mapping[str, torch.Tensor]) -> List[dict]:
    """The rank in use of every adapted matrix (techniques.tuners.tuner_ranks: AdaLoRA's kept triplets,
    S2-LoRA's coefficients with |s| >= 1e-4), one row per encoder layer and a column per kind; none
    for a run without ranks."""
    from ...core.targets import KINDS, parse_weight_name
    from ...techniques.tuners import tuner_ranks

    ranks = tuner_ranks(state)
    by_layer: Dict[int, dict] = {}
    for name, (_, rank) in ranks.items():
        layer, kind = parse_weight_name(name)
        by_layer.setdefault(layer, dict.fromkeys(KINDS, ""))[kind] = rank
    return [{"layer": layer, **by_layer[layer]} for layer in sorted(by_layer)]


def train_work(config: HydraConfig, full: bool, row: dict, data_dir: Path, overrides: List[str],
               context: CellContext) -> dict:
    """Trains one run, counts what it trained, reads its ranks and decodes its in-domain test set."""
    started = time.monotonic()
    context.runner.hydra_train(config, [*overrides, f"checkpoint.save_dir={context.directory}"],
                               context.directory / "train.log", threads=context.threads, gpus=context.gpus)
    checkpoint = context.directory / DECODED_CHECKPOINT
    train_seconds = round(time.monotonic() - started, 1)
    from ...plugin.formats.checkpoints import load_fairseq_checkpoint

    state = load_fairseq_checkpoint(str(checkpoint))["model"]  # read once for the counts and the ranks
    ranks = rank_rows(state)
    in_use = sum(rank for entry in ranks for kind, rank in entry.items() if kind != "layer" and rank != "")
    return {**row, **parameter_counts(state, full), "checkpoint": str(checkpoint), "train_seconds": train_seconds,
            "ranks_in_use": in_use if ranks else "", "ranks": ranks,
            "unknown_characters": unknown_character_share(data_dir / "test.ltr", data_dir / DICTIONARY),
            **decode(data_dir, checkpoint, context)}


def dictionary_symbols(dictionary: Path) -> set:
    return {line.split()[0] for line in dictionary.read_text(encoding="utf-8").splitlines() if line.strip()}


def unknown_character_share(references: Path, dictionary: Path) -> float:
    """Share of the characters of `references` (a .ltr file) that `dictionary` lacks."""
    known = dictionary_symbols(dictionary)
    symbols = references.read_text(encoding="utf-8").split()
    return round(sum(symbol not in known for symbol in symbols) / max(1, len(symbols)), 6)


def out_of_domain_work(row: dict, train_cell: str, train_dir: Path, eval_dir: Path, context: CellContext) -> dict:
    """Decodes the training cell's checkpoint on `eval_dir`'s test set with the training dictionary,
    the references without the characters it lacks."""
    trained = context.results[train_cell]
    data = context.directory / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    shutil.copyfile(eval_dir / "test.tsv", data / "test.tsv")
    shutil.copyfile(train_dir / DICTIONARY, data / DICTIONARY)
    known = dictionary_symbols(data / DICTIONARY)
    references = (eval_dir / "test.ltr").read_text(encoding="utf-8").splitlines()
    (data / "test.ltr").write_text("".join(" ".join(symbol for symbol in line.split() if symbol in known) + "\n"
                                           for line in references), encoding="utf-8")
    counts = {key: trained[key] for key in ("trainable_params", "trainable_percent", "head_params", "backbone_params",
                                            "ranks_in_use", "checkpoint", "train_seconds")}
    return {**row, **counts, "unknown_characters": unknown_character_share(eval_dir / "test.ltr", data / DICTIONARY),
            **decode(data, trained["checkpoint"], context)}


# ------------------------------------------------------------------------------------------ plan


class GridPlan(CorpusPlan):
    """Builds the engine cells of a grid whose corpus is (or will be) at `corpus` and whose run
    folder is `out_dir`; `cells` lists them in dependency order."""

    def __init__(self, spec: GridSpec, out_dir: Path, corpus: Path, config_root: Optional[Path] = None,
                 shared_dir: Optional[Path] = None):
        self.spec = spec
        super().__init__(out_dir, corpus, spec.pretrained, spec.pretrain_updates, spec.pretraining_seed, config_root,
                         shared_dir)
        for run in plan_runs(spec):
            trained = self._train(run)
            for language in spec.out_of_domain:
                self._out_of_domain(run, trained, language)

    def row(self, name: str, run: TrainingRun, eval_language: str, domain: str) -> dict:
        lr = self.spec.full.lr if run.method == FULL else self.spec.tuners.lr
        row = dict.fromkeys(RESULT_COLUMNS, "")
        row.update(cell=name, method=run.method, setting=run.setting, language=self.spec.language,
                   eval_language=eval_language, domain=domain, seed=self.spec.seed, updates=self.spec.updates, lr=lr)
        return row

    def _train(self, run: TrainingRun) -> str:
        spec, language = self.spec, self.spec.language
        name = run.name(language)
        section = spec.full if run.method == FULL else spec.tuners
        overrides = [f"common.user_dir={USER_DIR}", f"task.data={self.corpus / language}",
                     f"model.w2v_path={self.pretrained_path}", f"optimization.max_update={spec.updates}",
                     f"optimization.lr=[{section.lr}]", f"common.seed={spec.seed}",
                     *(f"model.{key}='{value}'" if isinstance(value, str) else f"model.{key}={value}"
                       for key, value in run.options),
                     *section.overrides]
        work = partial(train_work, self.finetune_config(run.config), run.method == FULL,
                       self.row(name, run, language, IN_DOMAIN), self.corpus / language, overrides)
        return self.add(Cell(name, self.out_dir / "train" / name, work,
                             [*self.pretrained_inputs, *self.manifests(language)], self.pretrained_after,
                             row=self.row(name, run, language, IN_DOMAIN)))

    def _out_of_domain(self, run: TrainingRun, trained: str, language: str) -> None:
        name = f"{trained}-on-{language}"
        row = self.row(name, run, language, OUT_OF_DOMAIN)
        work = partial(out_of_domain_work, row, trained, self.corpus / self.spec.language, self.corpus / language)
        inputs = [self.corpus / language / file for file in TEST_FILES] + [self.corpus / self.spec.language / DICTIONARY]
        self.add(Cell(name, self.out_dir / "out-of-domain" / name, work, inputs, [trained], row=row))


# ------------------------------------------------------------------------------------------- run


class GridRun(EngineGridRun):
    """A Liu et al. (2023) grid: results.csv / results.json hold one row per run and evaluation
    set, finished or not, and ranks.csv the ranks of the finished in-domain runs."""

    plan = GridPlan
    method = METHOD
    columns = RESULT_COLUMNS

    def side_tables(self):
        ranks = [{"cell": row["cell"], "method": row["method"], "setting": row["setting"], **entry}
                 for row in self.rows if row["domain"] == IN_DOMAIN for entry in row.get("ranks", [])]
        return [(RANKS_FILE, RANK_COLUMNS, ranks)]
